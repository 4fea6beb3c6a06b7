// Checkpoint I/O against the disk (issue 27), every figure beside its raw baseline in the same run,
// the two interleaved so that a drift of the disk's speed hits both alike:
//   save:    DiskSaver::Save (temporary file, write, fsync, rename, fsync of the directory)
//            against raw write + fsync + rename + directory fsync of the same bytes; and the
//            save's peak extra resident memory (VmHWM over the resident size before it, with
//            the high-water mark reset through /proc/self/clear_refs);
//   verify:  VerifyTorchSaveFile (every record's CRC-32) and ReadTorchSaveFile (load) against a
//            raw sequential read of the file, each after dropping the file from the page cache
//            (posix_fadvise DONTNEED after an fsync) so that all three read the disk;
//   async:   what an asynchronous Checkpoint save (async_save, the copy taken on the training
//            thread) blocks the training thread: Checkpoint::blocked_time of one save, after one
//            untimed warm-up save (the first save of a run allocates the copy's buffers; its time
//            is reported apart as async_first_blocked_s), against a warm memcpy of the same bytes;
//            the background write is then flushed, untimed;
//   list:    DiskSaver::List() with 1 and with 5 kept checkpoints of --list_mib, and a fresh
//            run's first save in that directory (list, verify the best, write): what start-up and
//            a preemption save cost, against the count of other checkpoints.
// One JSON object per line on stdout.
//
//   bazel run -c opt //tools/bench:checkpoint_io_benchmark -- [--sizes_mib=64,512,2048]
//       [--runs=3] [--list_mib=512] [--dir=/tmp]
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/large_buffer.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "base/file_system.h"
#include "engine/engine.h"
#include "handlers/checkpoint/checkpoint.h"
#include "handlers/checkpoint/disk_saver.h"
#include "handlers/checkpoint/stateful.h"
#include "handlers/serialization/torch_save.h"
#include "handlers/serialization/value.h"

namespace ember {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A model-like state: four float32 tensors adding up to `bytes`.
Value MakeState(int64_t bytes) {
  Value v = Value::Dict(/*ordered=*/true);
  for (int i = 0; i < 4; ++i) {
    v.Set("layer" + std::to_string(i) + ".weight", torch::rand({bytes / 16}, torch::kFloat32));
  }
  return v;
}

int64_t StatusKib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key));
  }
  return -1;
}

void ResetPeak() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
}

bool WriteAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

void Fail(const std::string& what) {
  std::fprintf(stderr, "checkpoint_io_benchmark: %s\n", what.c_str());
  std::exit(1);
}

// Raw: the same tensors' bytes, with the same durability protocol as DiskSaver.
double RawSave(const Value& v, const std::string& dir) {
  const std::string tmp = dir + "/.raw.bin.tmp", path = dir + "/raw.bin";
  const double t0 = Now();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  for (const Value& t : v.values()) {
    if (!WriteAll(fd, t.as_tensor().data_ptr(), t.as_tensor().nbytes())) Fail("raw write failed");
  }
  ::fsync(fd);
  ::close(fd);
  ::rename(tmp.c_str(), path.c_str());
  int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  ::fsync(d);
  ::close(d);
  return Now() - t0;
}

void DropCache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// A plain read() of the whole cold file into a fresh buffer; with `huge_pages`, into one advised
// for 2 MiB pages first (base/large_buffer.h, as Ember's FileSystem::ReadFile does): the floor of a
// read on a machine whose page faults are expensive.
double RawRead(const std::string& path, bool huge_pages = false) {
  DropCache(path);
  const double t0 = Now();
  int fd = ::open(path.c_str(), O_RDONLY);
  struct stat st;
  ::fstat(fd, &st);
  std::string buf;
  if (huge_pages) {
    ResizeLargeBuffer(buf, static_cast<size_t>(st.st_size));
  } else {
    buf.assign(static_cast<size_t>(st.st_size), '\0');
  }
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd, buf.data() + got, buf.size() - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  return Now() - t0;
}

std::string Median(std::vector<double> xs) {
  std::sort(xs.begin(), xs.end());
  return absl::StrCat(xs[xs.size() / 2]);
}

std::string Json(const std::vector<double>& xs) {
  std::string s = "[";
  for (size_t i = 0; i < xs.size(); ++i) absl::StrAppend(&s, i ? ", " : "", xs[i]);
  return s + "]";
}

// An asynchronous Checkpoint (n_saved=1) of `state` on an engine whose every run saves once.
class AsyncSaves {
 public:
  AsyncSaves(const Value& state, const std::string& dir) {
    holder_.v = state;
    auto saver = DiskSaver::Create({.dirname = dir, .require_empty = false});
    if (!saver.ok()) Fail(saver.status().ToString());
    auto ckpt = Checkpoint::Create({{"state", holder_}}, std::shared_ptr<SaveHandler>(*std::move(saver)),
                                   {.filename_prefix = "async",
                                    .score_function = [this](const Engine&) { return Score(saves_); },
                                    .n_saved = 1,
                                    .async_save = true});
    if (!ckpt.ok()) Fail(ckpt.status().ToString());
    ckpt_ = *std::move(ckpt);
    engine_.On(Events::EpochCompleted(), *ckpt_);
  }
  // One save; returns the seconds the training thread spent in the save's firing
  // (Checkpoint::blocked_time: the copy, the agreement, any wait for the previous write), not the
  // wait for the background write that the end of the engine's run adds (a trainer's save fires
  // mid-run and training goes on).
  double SaveAndFlush() {
    engine_.state().max_epochs.reset();
    const absl::Duration before = ckpt_->blocked_time();
    absl::Status s = engine_.Run(data_, {.max_epochs = 1});
    const double blocked = absl::ToDoubleSeconds(ckpt_->blocked_time() - before);
    if (!s.ok()) Fail(s.ToString());
    ++saves_;
    s = ckpt_->Flush(engine_.communicator());
    if (!s.ok()) Fail(s.ToString());
    return blocked;
  }

 private:
  struct Holder : Stateful {
    Value v;
    Value StateDict() const override { return v; }
    absl::Status LoadStateDict(const Value&) override { return absl::OkStatus(); }
  } holder_;
  Engine engine_{[](Engine&, const int&) {}};
  std::vector<int> data_ = {0};
  std::unique_ptr<Checkpoint> ckpt_;
  int64_t saves_ = 0;  // also the score: every save beats the last
};

// A warm memcpy of `bytes` (destination already touched): the floor of a copy on the training thread.
double WarmMemcpy(int64_t bytes, const Value& v) {
  std::string dst(static_cast<size_t>(bytes), '\0');
  double best = 1e9;
  for (int r = 0; r < 3; ++r) {
    const double t0 = Now();
    size_t at = 0;
    for (const Value& t : v.values()) {
      std::memcpy(dst.data() + at, t.as_tensor().data_ptr(), t.as_tensor().nbytes());
      at += t.as_tensor().nbytes();
    }
    best = std::min(best, Now() - t0);
  }
  return best;
}

void SaveAndRead(int64_t mib, int runs, const std::string& root) {
  const int64_t bytes = mib << 20;
  const std::string dir = root + "/ember_io_bench_" + std::to_string(mib);
  Value v = MakeState(bytes);
  auto saver = DiskSaver::Create({.dirname = dir, .require_empty = false});
  if (!saver.ok()) Fail(saver.status().ToString());
  std::vector<double> raw, ember, extra_mib, raw_read, raw_read_huge, verify, load;
  for (int r = 0; r < runs; ++r) {
    // Alternating which goes first, so that neither always follows the previous run's reads.
    if (r % 2 == 0) raw.push_back(RawSave(v, dir));
    const int64_t rss = StatusKib("VmRSS:");
    ResetPeak();
    const double t0 = Now();
    absl::Status s = (*saver)->Save(v, "bench.pt", CheckpointMetadata{.basename = "bench"});
    ember.push_back(Now() - t0);
    if (!s.ok()) Fail(s.ToString());
    extra_mib.push_back(static_cast<double>(StatusKib("VmHWM:") - rss) / 1024.0);
    if (r % 2 == 1) raw.push_back(RawSave(v, dir));
    const std::string path = dir + "/bench.pt";
    raw_read.push_back(RawRead(path));
    raw_read_huge.push_back(RawRead(path, /*huge_pages=*/true));
    DropCache(path);
    double t1 = Now();
    absl::StatusOr<ArchiveCheck> check = VerifyTorchSaveFile(path);
    verify.push_back(Now() - t1);
    if (!check.ok()) Fail(check.status().ToString());
    DropCache(path);
    t1 = Now();
    absl::StatusOr<Value> back = ReadTorchSaveFile(path);
    load.push_back(Now() - t1);
    if (!back.ok()) Fail(back.status().ToString());
  }
  std::vector<double> async_blocked;
  double async_first = 0;
  {
    AsyncSaves async(v, dir + "/async");
    async_first = async.SaveAndFlush();
    for (int r = 0; r < runs; ++r) async_blocked.push_back(async.SaveAndFlush());
  }
  const double memcpy_s = WarmMemcpy(bytes, v);
  std::printf(
      "{\"bench\": \"save_and_read\", \"mib\": %lld, \"raw_save_s\": %s, \"ember_save_s\": %s, "
      "\"save_ratio_median\": %.3f, \"save_peak_extra_mib\": %s, \"raw_read_s\": %s, "
      "\"raw_read_hugepages_s\": %s, \"verify_s\": %s, \"load_s\": %s, \"async_blocked_s\": %s, "
      "\"async_first_blocked_s\": %s, \"memcpy_s\": %s}\n",
      static_cast<long long>(mib), Json(raw).c_str(), Json(ember).c_str(),
      std::stod(Median(raw)) / std::stod(Median(ember)), Json(extra_mib).c_str(), Json(raw_read).c_str(),
      Json(raw_read_huge).c_str(), Json(verify).c_str(), Json(load).c_str(), Json(async_blocked).c_str(),
      absl::StrCat(async_first).c_str(), absl::StrCat(memcpy_s).c_str());
  std::fflush(stdout);
  std::string rm = "rm -rf '" + dir + "'";
  if (std::system(rm.c_str()) != 0) Fail("cleanup failed");
}

void ListCost(int64_t mib, const std::string& root) {
  const std::string dir = root + "/ember_io_bench_list";
  Value v = MakeState(mib << 20);
  for (int kept : {1, 5}) {
    std::string rm = "rm -rf '" + dir + "'";
    if (std::system(rm.c_str()) != 0) Fail("cleanup failed");
    {
      auto writer = DiskSaver::Create({.dirname = dir});
      if (!writer.ok()) Fail(writer.status().ToString());
      for (int i = 0; i < kept; ++i) {
        CheckpointMetadata meta{.basename = "model", .priority = static_cast<double>(i), .save_index = i};
        absl::Status s = (*writer)->Save(v, absl::StrCat("model_", i, ".pt"), meta);
        if (!s.ok()) Fail(s.ToString());
      }
    }
    for (int i = 0; i < kept; ++i) DropCache(absl::StrCat(dir, "/model_", i, ".pt"));
    // Start-up: list the directory (trailers only).
    auto saver = DiskSaver::Create({.dirname = dir, .require_empty = false});
    double t0 = Now();
    auto listed = saver.ok() ? (*saver)->List() : saver.status();
    const double list_s = Now() - t0;
    if (!listed.ok() || static_cast<int>(listed->size()) != kept) Fail("list failed");
    // A fresh run's first save (a preemption): verify the best (the newest here), then write.
    t0 = Now();
    absl::Status s = (*saver)->Verify(absl::StrCat("model_", kept - 1, ".pt"));
    const double verify_best_s = Now() - t0;
    if (!s.ok()) Fail(s.ToString());
    t0 = Now();
    s = (*saver)->Save(v, "model_preempt.pt", CheckpointMetadata{.basename = "model", .save_index = kept});
    const double save_s = Now() - t0;
    if (!s.ok()) Fail(s.ToString());
    std::printf(
        "{\"bench\": \"list\", \"mib\": %lld, \"kept\": %d, \"list_s\": %.6f, \"verify_best_s\": %.4f, "
        "\"first_save_s\": %.4f}\n",
        static_cast<long long>(mib), kept, list_s, verify_best_s, save_s);
    std::fflush(stdout);
    if (std::system(rm.c_str()) != 0) Fail("cleanup failed");
  }
}

}  // namespace
}  // namespace ember

int main(int argc, char** argv) {
  std::vector<int64_t> sizes = {64, 512, 2048};
  int runs = 3;
  int64_t list_mib = 512;
  std::string dir = "/tmp";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      const size_t n = std::strlen(flag);
      return a.compare(0, n, flag) == 0 ? argv[i] + n : nullptr;
    };
    if (const char* s = value("--sizes_mib=")) {
      sizes.clear();
      for (absl::string_view p : absl::StrSplit(s, ',')) {
        int64_t m;
        if (!absl::SimpleAtoi(p, &m) || m <= 0) ember::Fail(absl::StrCat("bad --sizes_mib entry '", std::string(p), "'"));
        sizes.push_back(m);
      }
    } else if (const char* s = value("--runs=")) {
      if (!absl::SimpleAtoi(s, &runs) || runs <= 0) ember::Fail(absl::StrCat("bad --runs '", s, "'"));
    } else if (const char* s = value("--list_mib=")) {
      if (!absl::SimpleAtoi(s, &list_mib) || list_mib <= 0) ember::Fail(absl::StrCat("bad --list_mib '", s, "'"));
    } else if (const char* s = value("--dir=")) {
      dir = s;
    } else {
      ember::Fail(absl::StrCat("unknown flag '", a, "'"));
    }
  }
  for (int64_t mib : sizes) ember::SaveAndRead(mib, runs, dir);
  ember::ListCost(list_mib, dir);
  return 0;
}
