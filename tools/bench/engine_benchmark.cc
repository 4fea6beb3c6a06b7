// Engine overhead per iteration with a no-op step: bare, and with four handlers of the kind
// Timer + TerminateOnNan + EarlyStopping + Checkpoint attach (two clock reads per iteration, a
// finiteness check of the output, two per-epoch handlers). Also counts heap allocations per
// iteration in steady state (the difference between a long and a short run).
//
// With a parameter scheduler, and with a scheduler and an EMAHandler too (issue 28).
//
//   bazel run -c opt //tools/bench:engine_benchmark
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "base/clock.h"
#include "benchmark/benchmark.h"
#include "engine/engine.h"
#include "handlers/checkpoint/checkpoint.h"
#include "handlers/early_stopping.h"
#include "handlers/ema_handler.h"
#include "handlers/param_scheduler.h"
#include "handlers/checkpoint/in_memory_saver.h"
#include "handlers/terminate_on_nan.h"
#include "handlers/timer.h"

namespace {
std::atomic<int64_t> g_allocations{0};
}  // namespace

// GCC 12 flags malloc/free inside replaced operator new/delete as mismatched; they match.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace ember {
namespace {

constexpr int kEpochLength = 10000;

void AttachFourHandlers(Engine& engine, double* timer_total, int64_t* bad) {
  Clock* clock = RealClock();
  static double started = 0;
  // Timer(average) resumed at ITERATION_STARTED, paused and stepped at ITERATION_COMPLETED.
  engine.On(Events::IterationStarted(), [clock] { started = clock->NowSeconds(); });
  engine.On(Events::IterationCompleted(), [clock, timer_total] {
    *timer_total += clock->NowSeconds() - started;
  });
  // TerminateOnNan on a scalar output.
  engine.On(Events::IterationCompleted(), [bad](Engine& e) {
    const double* loss = e.state().output_as<double>();
    if (loss == nullptr || !std::isfinite(*loss)) {
      ++*bad;
      e.Terminate();
    }
  });
  // EarlyStopping and Checkpoint: once per epoch.
  engine.On(Events::EpochCompleted(), [](Engine& e) {
    benchmark::DoNotOptimize(e.state().metrics.size());
  });
}

// Runs the engine over `data` for one epoch; returns allocations made during the run.
int64_t RunOnce(Engine& engine, const std::vector<int>& data, int64_t length) {
  engine.state().max_epochs.reset();
  int64_t before = g_allocations.load();
  absl::Status s = engine.Run(data, {.max_epochs = 1, .epoch_length = length});
  if (!s.ok()) std::abort();
  return g_allocations.load() - before;
}

void Report(benchmark::State& state, Engine& engine, const std::vector<int>& data) {
  // Steady-state allocations: (allocs of a 2N run - allocs of an N run) / N.
  int64_t short_run = RunOnce(engine, data, kEpochLength / 2);
  int64_t long_run = RunOnce(engine, data, kEpochLength);
  state.counters["allocs_per_iter"] =
      static_cast<double>(long_run - short_run) / (kEpochLength / 2);
  state.counters["ns_per_iter"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * kEpochLength,
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.SetItemsProcessed(state.iterations() * kEpochLength);
}

void BM_EngineNoHandler(benchmark::State& state) {
  std::vector<int> data(kEpochLength, 1);
  Engine engine([](Engine&, const int& b) { benchmark::DoNotOptimize(b); });
  for (auto _ : state) RunOnce(engine, data, kEpochLength);
  Report(state, engine, data);
}
BENCHMARK(BM_EngineNoHandler)->Unit(benchmark::kMicrosecond);

void BM_EngineNoHandlerScalarOutput(benchmark::State& state) {
  std::vector<int> data(kEpochLength, 1);
  Engine engine([](Engine&, const int& b) { return 0.5 * b; });
  for (auto _ : state) RunOnce(engine, data, kEpochLength);
  Report(state, engine, data);
}
BENCHMARK(BM_EngineNoHandlerScalarOutput)->Unit(benchmark::kMicrosecond);

void BM_EngineFourHandlers(benchmark::State& state) {
  std::vector<int> data(kEpochLength, 1);
  Engine engine([](Engine&, const int& b) { return 0.5 * b; });
  double timer_total = 0;
  int64_t bad = 0;
  AttachFourHandlers(engine, &timer_total, &bad);
  for (auto _ : state) RunOnce(engine, data, kEpochLength);
  Report(state, engine, data);
  if (bad != 0) state.SkipWithError("a finite output was reported as NaN");
}
BENCHMARK(BM_EngineFourHandlers)->Unit(benchmark::kMicrosecond);

void BM_EngineFilteredHandlers(benchmark::State& state) {
  // Handlers that fire rarely (every=100 on ITERATION_COMPLETED, once per epoch): the cost of
  // evaluating a filter on every iteration.
  std::vector<int> data(kEpochLength, 1);
  Engine engine([](Engine&, const int& b) { return 0.5 * b; });
  int64_t fired = 0;
  engine.On(Events::IterationCompleted().Every(100), [&] { ++fired; });
  engine.On(Events::IterationCompleted().Once(7), [&] { ++fired; });
  for (auto _ : state) RunOnce(engine, data, kEpochLength);
  Report(state, engine, data);
  benchmark::DoNotOptimize(fired);
}
BENCHMARK(BM_EngineFilteredHandlers)->Unit(benchmark::kMicrosecond);

// The real Timer (resume/pause/step per iteration), TerminateOnNan (synchronized: one agreement
// per iteration, through the single-process communicator), EarlyStopping and a Checkpoint (in
// memory) per epoch, attached to `engine` (which owns the last three; this owns the Timer and the
// checkpointed object).
struct RealHandlers {
  struct Counter : Stateful {
    Value StateDict() const override { return Value(int64_t{1}); }
    absl::Status LoadStateDict(const Value&) override { return absl::OkStatus(); }
  };
  RealHandlers(benchmark::State& state, Engine& engine) {
    if (!timer.Attach(engine, {.start = Events::EpochStarted(), .pause = Events::IterationCompleted(),
                               .resume = Events::IterationStarted(), .step = Events::IterationCompleted()})
             .ok()) {
      state.SkipWithError("timer");
    }
    engine.On(Events::IterationCompleted(), TerminateOnNan());
    auto es = EarlyStopping::Create({.patience = 1000000, .score_function = [](const Engine&) { return 1.0; }}, engine);
    engine.On(Events::EpochCompleted(), *std::move(es));
    auto ckpt = Checkpoint::Create({{"counter", counter}}, std::make_shared<InMemorySaver>(), {.n_saved = 1});
    engine.On(Events::EpochCompleted(), *std::move(ckpt));
  }
  Timer timer{/*average=*/true};
  Counter counter;
};

void BM_EngineRealHandlers(benchmark::State& state) {
  std::vector<int> data(kEpochLength, 1);
  Engine engine([](Engine&, const int& b) { return 0.5 * b; });
  RealHandlers handlers(state, engine);
  for (auto _ : state) RunOnce(engine, data, kEpochLength);
  Report(state, engine, data);
}
BENCHMARK(BM_EngineRealHandlers)->Unit(benchmark::kMicrosecond);

// Issue 28: the real four handlers plus a parameter scheduler (cosine annealing of an SGD's lr
// at ITERATION_STARTED), and plus an EMAHandler of a small model (Linear(16, 16): 272
// parameters) at ITERATION_COMPLETED. The scheduler's cost is its arithmetic and one write to the
// optimizer's options; the EMA's is two LibTorch kernels per parameter tensor per update (it
// grows with the model: for a real model it is the same work as in ignite, per tensor).
void RealHandlersWithSchedules(benchmark::State& state, bool ema) {
  std::vector<int> data(kEpochLength, 1);
  Engine engine([](Engine&, const int& b) { return 0.5 * b; });
  RealHandlers handlers(state, engine);
  torch::nn::Linear model(16, 16);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  auto cosine = CosineAnnealingScheduler::Create(
      optimizer, {.param_name = "lr", .start_value = 0.1, .end_value = 0.0, .cycle_size = 2 * kEpochLength});
  if (!cosine.ok()) state.SkipWithError("scheduler");
  engine.On(Events::IterationStarted(), **cosine);
  std::unique_ptr<EMAHandler> ema_handler;
  if (ema) {
    auto made = EMAHandler::Create(model, {.momentum = 0.001});
    if (!made.ok() || !(*made)->Attach(engine).ok()) state.SkipWithError("ema");
    ema_handler = *std::move(made);
  }
  for (auto _ : state) RunOnce(engine, data, kEpochLength);
  Report(state, engine, data);
}

void BM_EngineRealHandlersWithLrScheduler(benchmark::State& state) { RealHandlersWithSchedules(state, false); }
BENCHMARK(BM_EngineRealHandlersWithLrScheduler)->Unit(benchmark::kMicrosecond);

void BM_EngineRealHandlersWithLrSchedulerAndEma(benchmark::State& state) { RealHandlersWithSchedules(state, true); }
BENCHMARK(BM_EngineRealHandlersWithLrSchedulerAndEma)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace ember

BENCHMARK_MAIN();
