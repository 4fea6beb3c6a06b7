// Resume of a large checkpoint on several ranks, end to end (issue 27, item 2): what tools/train
// does with --resume_from (tools/run_dir.cc, ReadOnRootAndShare, then LoadObjects into the model)
// and what Checkpoint::ResumeLatest does with the newest file: rank 0 reads the file and checks it
// whole (every CRC-32 and Ember's checksum, VerifyTorchSave), broadcasts its bytes, every rank
// parses them in place without computing the CRC-32s again (ReadVerifiedTorchSave) and loads the
// tensors into its model. Against the raw I/O floor of the same file:
// a raw sequential read on rank 0, and a raw read followed by the broadcast of its bytes.
//
// The file is written once with DiskSaver (a model of four float32 parameters adding up to
// --mib, under the "model" key, as the trainer's checkpoints hold it); before every timed read it
// is dropped from the page cache (fdatasync + posix_fadvise DONTNEED, as checkpoint_io_benchmark
// does), so every read is from the disk. Per run, in this order (alternating raw first / Ember
// first would need the file read twice per order; the raw reads go first in even runs):
//   trainer:  ReadOnRootAndShare + LoadObjects, timed as one (what train.cc runs);
//   phases:   the same steps one by one, each ended by a barrier: read (rank 0), verify
//             (VerifyTorchSave on rank 0), broadcast, parse (ReadVerifiedTorchSave on every rank), load
//             (LoadObjects into the model on every rank);
//   raw:      read on rank 0 (a plain read() into a fresh buffer, and the same into a buffer
//             advised for 2 MiB pages); read on rank 0 + Broadcast of the bytes.
// Rank 0 prints one JSON object per size, times in seconds per run.
//
//   bazel build -c opt //tools/bench:resume_benchmark
//   mpirun -np 2 bazel-bin/tools/bench/resume_benchmark [--sizes_mib=512] [--runs=3] [--dir=/tmp]
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/large_buffer.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/file_system.h"
#include "distributed/mpi_communicator.h"
#include "distributed/root_action.h"
#include "handlers/checkpoint/disk_saver.h"
#include "handlers/checkpoint/saveable.h"
#include "handlers/serialization/torch_save.h"
#include "handlers/serialization/value.h"
#include "tools/run_dir.h"

namespace ember {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Fail(const std::string& what) {
  std::fprintf(stderr, "resume_benchmark: %s\n", what.c_str());
  std::exit(1);
}

void Check(const absl::Status& s) {
  if (!s.ok()) Fail(s.ToString());
}

struct Layer : torch::nn::Module {
  explicit Layer(int64_t n) { weight = register_parameter("weight", torch::zeros({n})); }
  torch::Tensor weight;
};

// Four float32 parameters, "layer0.weight".."layer3.weight", adding up to `bytes`.
struct Model : torch::nn::Module {
  explicit Model(int64_t bytes) {
    for (int i = 0; i < 4; ++i) layers.push_back(register_module("layer" + std::to_string(i), std::make_shared<Layer>(bytes / 16)));
  }
  std::vector<std::shared_ptr<Layer>> layers;
};

void DropCache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// A plain read() of the whole file into a fresh buffer; with `huge_pages`, into one advised for
// 2 MiB pages first (base/large_buffer.h, as Ember's FileSystem::ReadFile does): the floor of a
// read on a machine whose page faults are expensive.
std::string RawRead(const std::string& path, bool huge_pages = false) {
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
  if (got != buf.size()) Fail("raw read short");
  return buf;
}

std::string Json(const std::vector<double>& xs) {
  std::string s = "[";
  for (size_t i = 0; i < xs.size(); ++i) absl::StrAppend(&s, i ? ", " : "", xs[i]);
  return s + "]";
}

double Median(std::vector<double> xs) {
  std::sort(xs.begin(), xs.end());
  return xs[xs.size() / 2];  // the upper median, as checkpoint_io_benchmark
}

void Resume(dist::Communicator& comm, int64_t mib, int runs, const std::string& root) {
  const int64_t bytes = mib << 20;
  const bool r0 = comm.rank() == 0;
  const absl::Time deadline = absl::Now() + absl::Minutes(30);
  const std::string dir = root + "/ember_resume_bench_" + std::to_string(mib);
  const std::string path = dir + "/model_1.pt";
  if (r0) {
    std::string rm = "rm -rf '" + dir + "'";
    if (std::system(rm.c_str()) != 0) Fail("cleanup failed");
    Model written(bytes);
    for (auto& l : written.layers) l->weight.data().uniform_();
    auto saver = DiskSaver::Create({.dirname = dir});
    if (!saver.ok()) Fail(saver.status().ToString());
    absl::StatusOr<Value> state = Saveable(written).StateDict();
    Check(state.status());
    Value v = Value::Dict(/*ordered=*/true);
    v.Set("model", *std::move(state));
    Check((*saver)->Save(v, "model_1.pt", CheckpointMetadata{.basename = "model", .save_index = 1}));
  }
  Check(comm.Barrier(deadline));
  Model model(bytes);  // every rank's model, loaded into by each run
  const ObjectMap to_load = {{"model", model}};

  std::vector<double> trainer, read, verify, bcast, parse, load, total, raw_read, raw_read_huge, raw_read_bcast;
  auto cold = [&] {
    if (r0) DropCache(path);
    Check(comm.Barrier(deadline));
  };
  auto raw = [&] {
    cold();
    double t0 = Now();
    if (r0) {
      const std::string got = RawRead(path);
      raw_read.push_back(Now() - t0);
    }
    Check(comm.Barrier(deadline));
    cold();
    t0 = Now();
    if (r0) {
      const std::string got = RawRead(path, /*huge_pages=*/true);
      raw_read_huge.push_back(Now() - t0);
    }
    Check(comm.Barrier(deadline));
    cold();
    t0 = Now();
    std::string b;
    if (r0) b = RawRead(path);
    Check(comm.Broadcast(b, 0, deadline));
    Check(comm.Barrier(deadline));
    raw_read_bcast.push_back(Now() - t0);
  };
  for (int r = 0; r < runs; ++r) {
    if (r % 2 == 0) raw();
    // What train.cc runs for --resume_from, then the load into the model.
    cold();
    double t0 = Now();
    {
      absl::StatusOr<Value> loaded = tools::ReadOnRootAndShare(comm, path, deadline);
      Check(loaded.status());
      Check(LoadObjects(to_load, *loaded));
    }
    Check(comm.Barrier(deadline));
    trainer.push_back(Now() - t0);
    // The same steps, one by one.
    cold();
    const double start = Now();
    t0 = start;
    auto b = std::make_shared<std::string>();
    double read_s = 0, verify_s = 0;
    Check(dist::RunOnRoot(comm, 0, deadline, [&]() -> absl::Status {
      double t = Now();
      absl::StatusOr<std::string> got = FileSystem::Default()->ReadFile(path);
      if (!got.ok()) return got.status();
      *b = *std::move(got);
      read_s = Now() - t;
      t = Now();
      absl::Status s = VerifyTorchSave(*b, path).status();
      verify_s = Now() - t;
      return s;
    }));
    Check(comm.Barrier(deadline));
    if (r0) {
      read.push_back(read_s);
      verify.push_back(verify_s);
    }
    t0 = Now();
    Check(comm.Broadcast(*b, 0, deadline));
    Check(comm.Barrier(deadline));
    bcast.push_back(Now() - t0);
    t0 = Now();
    {
      absl::StatusOr<Value> loaded = ReadVerifiedTorchSave(std::move(b), path);
      Check(loaded.status());
      Check(comm.Barrier(deadline));
      parse.push_back(Now() - t0);
      t0 = Now();
      Check(LoadObjects(to_load, *loaded));
      Check(comm.Barrier(deadline));
      load.push_back(Now() - t0);
    }
    total.push_back(Now() - start);
    if (r % 2 == 1) raw();
  }
  // Every rank's model holds the file's tensors (rank 0's written model was random, not zero).
  double sum = 0;
  for (auto& l : model.layers) sum += l->weight.sum().item<double>();
  std::vector<double> sums(static_cast<size_t>(comm.world_size()));
  Check(comm.AllGather(absl::MakeConstSpan(&sum, 1), absl::MakeSpan(sums), deadline));
  for (double s : sums) {
    if (s != sums[0] || s == 0) Fail("the ranks' models differ after the load");
  }
  if (r0) {
    std::printf(
        "{\"bench\": \"resume\", \"mib\": %lld, \"ranks\": %d, \"trainer_resume_s\": %s, \"read_s\": %s, "
        "\"verify_s\": %s, \"broadcast_s\": %s, \"parse_s\": %s, \"load_s\": %s, \"total_s\": %s, "
        "\"raw_read_s\": %s, \"raw_read_hugepages_s\": %s, \"raw_read_broadcast_s\": %s, "
        "\"raw_read_over_trainer_median\": %.3f, \"raw_read_hugepages_over_trainer_median\": %.3f, "
        "\"raw_read_broadcast_over_trainer_median\": %.3f}\n",
        static_cast<long long>(mib), comm.world_size(), Json(trainer).c_str(), Json(read).c_str(),
        Json(verify).c_str(), Json(bcast).c_str(), Json(parse).c_str(), Json(load).c_str(), Json(total).c_str(),
        Json(raw_read).c_str(), Json(raw_read_huge).c_str(), Json(raw_read_bcast).c_str(),
        Median(raw_read) / Median(trainer), Median(raw_read_huge) / Median(trainer),
        Median(raw_read_bcast) / Median(trainer));
    std::fflush(stdout);
    std::string rm = "rm -rf '" + dir + "'";
    if (std::system(rm.c_str()) != 0) Fail("cleanup failed");
  }
  Check(comm.Barrier(deadline));
}

}  // namespace
}  // namespace ember

int main(int argc, char** argv) {
  std::vector<int64_t> sizes = {512};
  int runs = 3;
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
    } else if (const char* s = value("--dir=")) {
      dir = s;
    } else {
      ember::Fail(absl::StrCat("unknown flag '", a, "'"));
    }
  }
  auto comm = ember::dist::MpiCommunicator::Create();
  if (!comm.ok()) ember::Fail(comm.status().ToString());
  for (int64_t mib : sizes) ember::Resume(**comm, mib, runs, dir);
  return 0;
}
