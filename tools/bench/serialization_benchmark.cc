// torch.save-format checkpoint write and read throughput, against a raw write+fsync and a raw
// read of the same bytes to and from the same directory, in the same run.
//
//   bazel run -c opt //tools/bench:serialization_benchmark -- [--benchmark_filter=...]
//   (EMBER_BENCH_DIR picks the directory; default /tmp)
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "benchmark/benchmark.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "handlers/checkpoint.h"
#include "handlers/disk_saver.h"
#include "handlers/serialization/torch_save.h"
#include "handlers/serialization/value.h"

namespace ember {
namespace {

std::string BenchPath(const char* name) {
  const char* dir = std::getenv("EMBER_BENCH_DIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

// A model-like state: a few large float tensors that add up to `bytes`.
Value MakeState(int64_t bytes) {
  Value v = Value::Dict(/*ordered=*/true);
  const int64_t per = bytes / 4;
  for (int i = 0; i < 4; ++i) {
    v.Set("layer" + std::to_string(i) + ".weight", torch::rand({per / 4}, torch::kFloat32));
  }
  return v;
}

absl::Status WriteAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) return absl::InternalError("write failed");
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

void BM_RawWriteFsync(benchmark::State& state) {
  Value v = MakeState(state.range(0));
  std::vector<const torch::Tensor*> tensors;
  for (const Value& t : v.values()) tensors.push_back(&t.as_tensor());
  const std::string path = BenchPath("ember_bench_raw.bin");
  for (auto _ : state) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (const torch::Tensor* t : tensors) {
      if (!WriteAll(fd, t->data_ptr(), t->nbytes()).ok()) state.SkipWithError("write failed");
    }
    ::fsync(fd);
    ::close(fd);
  }
  ::unlink(path.c_str());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void BM_TorchSaveFsync(benchmark::State& state) {
  Value v = MakeState(state.range(0));
  const std::string path = BenchPath("ember_bench_ckpt.pt");
  for (auto _ : state) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    absl::Status s = WriteTorchSave(v, [fd](const void* d, size_t n) { return WriteAll(fd, d, n); });
    if (!s.ok()) state.SkipWithError("save failed");
    ::fsync(fd);
    ::close(fd);
  }
  ::unlink(path.c_str());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void BM_RawRead(benchmark::State& state) {
  const std::string path = BenchPath("ember_bench_raw_read.bin");
  {
    std::vector<char> bytes(static_cast<size_t>(state.range(0)), 1);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    (void)WriteAll(fd, bytes.data(), bytes.size());
    ::close(fd);
  }
  std::vector<char> buffer(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    int fd = ::open(path.c_str(), O_RDONLY);
    size_t got = 0;
    while (got < buffer.size()) {
      ssize_t n = ::read(fd, buffer.data() + got, buffer.size() - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    ::close(fd);
    benchmark::DoNotOptimize(buffer.data());
  }
  ::unlink(path.c_str());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void BM_TorchLoad(benchmark::State& state) {
  const std::string path = BenchPath("ember_bench_load.pt");
  {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    (void)WriteTorchSave(MakeState(state.range(0)),
                         [fd](const void* d, size_t n) { return WriteAll(fd, d, n); });
    ::close(fd);
  }
  for (auto _ : state) {
    absl::StatusOr<Value> v = ReadTorchSaveFile(path);
    if (!v.ok()) state.SkipWithError("load failed");
    benchmark::DoNotOptimize(v);
  }
  ::unlink(path.c_str());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

// DiskSaver's full atomic protocol (temporary file, fsync, rename, fsync of the directory).
void BM_DiskSaverSave(benchmark::State& state) {
  Value v = MakeState(state.range(0));
  const std::string dir = BenchPath("ember_bench_disksaver");
  auto saver = DiskSaver::Create({.dirname = dir, .require_empty = false});
  if (!saver.ok()) {
    state.SkipWithError("DiskSaver::Create failed");
    return;
  }
  for (auto _ : state) {
    if (!(*saver)->Save(v, "bench.pt", {}).ok()) state.SkipWithError("save failed");
  }
  (void)(*saver)->Remove("bench.pt");
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

// How long an asynchronous checkpoint blocks the training thread (the copy of the state), and
// for comparison the synchronous save of the same state (BM_DiskSaverSave).
void BM_AsyncSaveBlocking(benchmark::State& state) {
  int64_t saves = 0;  // also the score: every save beats the last
  struct Holder : Stateful {
    Value v;
    Value StateDict() const override { return v; }
    absl::Status LoadStateDict(const Value&) override { return absl::OkStatus(); }
  } holder;
  holder.v = MakeState(state.range(0));
  const std::string dir = BenchPath("ember_bench_async_") + std::to_string(state.range(0));
  if (auto names = FileSystem::Default()->ListDir(dir); names.ok()) {
    for (const std::string& n : *names) (void)FileSystem::Default()->RemoveFile(dir + "/" + n);
  }
  auto saver = DiskSaver::Create({.dirname = dir, .require_empty = false});
  auto ckpt = Checkpoint::Create({{"state", holder}}, std::shared_ptr<SaveHandler>(*std::move(saver)),
                                 {.score_function = [&saves](const Engine&) { return Score(saves); },
                                  .n_saved = 1,
                                  .async_save = true});
  std::vector<int> data = {0};
  Engine engine([](Engine&, const int&) {});
  engine.On(Events::EpochCompleted(), **ckpt);
  double blocked = 0;
  for (auto _ : state) {
    engine.state().max_epochs.reset();
    // Time only the firing that starts the save; the background write finishes untimed.
    state.PauseTiming();
    if (!(*ckpt)->Flush(engine.communicator()).ok()) state.SkipWithError("flush failed");
    state.ResumeTiming();
    const absl::Time start = absl::Now();
    if (!engine.Run(data, {.max_epochs = 1}).ok()) state.SkipWithError("run failed");
    blocked += absl::ToDoubleMilliseconds(absl::Now() - start);
    ++saves;
  }
  (void)(*ckpt)->Flush(engine.communicator());
  state.counters["blocked_ms"] = blocked / static_cast<double>(saves);
}

#define EMBER_DISK_SIZES ->Arg(1 << 20)->Arg(64 << 20)->Arg(512 << 20)->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_DiskSaverSave) EMBER_DISK_SIZES;
BENCHMARK(BM_AsyncSaveBlocking)->Arg(1 << 20)->Arg(64 << 20)->Arg(512 << 20)->Iterations(5)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RawWriteFsync)->Arg(512 << 20)->Unit(benchmark::kMillisecond)->UseRealTime();

#define EMBER_SIZES ->Arg(1 << 20)->Arg(64 << 20)->Arg(256 << 20)->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_RawWriteFsync) EMBER_SIZES;
BENCHMARK(BM_TorchSaveFsync) EMBER_SIZES;
BENCHMARK(BM_RawRead) EMBER_SIZES;
BENCHMARK(BM_TorchLoad) EMBER_SIZES;

}  // namespace
}  // namespace ember

BENCHMARK_MAIN();
