#include "tests/distributed/communicator_checks.h"

#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/launch.h"
#include "engine/engine.h"
#include "engine/synchronized_handler.h"
#include "gtest/gtest.h"
#include "handlers/early_stopping.h"
#include "handlers/terminate_on_nan.h"

namespace probes {

// Synchronized handlers that propose a score and record every decision (a checkpoint would save
// on it: "decided" is what would be written).
template <int kValue, ember::dist::Reduction kOp>
class Probe : public ember::SynchronizedHandler {
 public:
  size_t num_values() const override { return 1; }
  ember::dist::Reduction reduction(size_t) const override { return kOp; }
  absl::Status Propose(ember::Engine&, absl::Span<double> values) override {
    values[0] = kValue / 10000.0;
    return absl::OkStatus();
  }
  absl::Status Decide(ember::Engine&, const ember::Agreement& agreement) override {
    decided->push_back(agreement.value(0));
    return absl::OkStatus();
  }
  std::vector<double>* decided = nullptr;
};
class AccuracyProbe final : public Probe<9531, ember::dist::Reduction::kMax> {};
class LossProbe final : public Probe<1234, ember::dist::Reduction::kMean> {};

}  // namespace probes

namespace ember::dist::testing {
namespace {

absl::Time Deadline() { return absl::Now() + absl::Seconds(60); }

}  // namespace

void CheckAllReduce(Communicator& comm) {
  const int n = comm.world_size();
  const int r = comm.rank();
  std::vector<double> d = {static_cast<double>(r + 1), -static_cast<double>(r), 0.5};
  ASSERT_TRUE(comm.AllReduce(absl::MakeSpan(d), ReduceOp::kSum, Deadline()).ok());
  EXPECT_EQ(d[0], n * (n + 1) / 2.0);
  EXPECT_EQ(d[1], -(n * (n - 1) / 2.0));
  EXPECT_EQ(d[2], 0.5 * n);
  std::vector<float> f = {static_cast<float>(r), static_cast<float>(-r)};
  ASSERT_TRUE(comm.AllReduce(absl::MakeSpan(f), ReduceOp::kMax, Deadline()).ok());
  EXPECT_EQ(f[0], n - 1);
  EXPECT_EQ(f[1], 0);
  std::vector<double> m = {static_cast<double>(r)};
  ASSERT_TRUE(comm.AllReduce(absl::MakeSpan(m), ReduceOp::kMin, Deadline()).ok());
  EXPECT_EQ(m[0], 0);
  std::vector<double> empty;
  EXPECT_TRUE(comm.AllReduce(absl::MakeSpan(empty), ReduceOp::kSum, Deadline()).ok());
}

void CheckTypedAllReduce(Communicator& comm) {
  const int n = comm.world_size();
  const int r = comm.rank();
  const double sum_1_to_n = n * (n + 1) / 2.0;
  // Two collectives in flight before either is waited for.
  std::vector<float> f = {1.25f * (r + 1), -0.5f * (r + 1)};
  std::vector<double> d = {0.1 * (r + 1)};
  auto pf = comm.StartAllReduce(Buffer::Host(f.data(), f.size()), ReduceOp::kSum, Deadline());
  ASSERT_TRUE(pf.ok()) << pf.status();
  auto pd = comm.StartAllReduce(Buffer::Host(d.data(), d.size()), ReduceOp::kMax, Deadline());
  ASSERT_TRUE(pd.ok()) << pd.status();
  ASSERT_TRUE((*pf)->Wait().ok());
  ASSERT_TRUE((*pd)->Wait().ok());
  EXPECT_TRUE((*pf)->Wait().ok()) << "a second Wait returns the first result";
  EXPECT_EQ(f[0], static_cast<float>(1.25 * sum_1_to_n));
  EXPECT_EQ(f[1], static_cast<float>(-0.5 * sum_1_to_n));
  EXPECT_EQ(d[0], 0.1 * n);
  // int64 beyond float's range, exact.
  std::vector<int64_t> i = {(int64_t{1} << 40) + r, -r};
  ASSERT_TRUE(comm.AllReduce(Buffer::Host(i.data(), i.size()), ReduceOp::kSum, Deadline()).ok());
  EXPECT_EQ(i[0], n * (int64_t{1} << 40) + n * (n - 1) / 2);
  EXPECT_EQ(i[1], -(n * (n - 1) / 2));
  // float16 and bfloat16: values and sums exactly representable in both.
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    auto to16 = [t](float x) { return t == DType::kFloat16 ? FloatToHalf(x) : FloatToBFloat16(x); };
    auto from16 = [t](uint16_t x) { return t == DType::kFloat16 ? HalfToFloat(x) : BFloat16ToFloat(x); };
    std::vector<uint16_t> h = {to16(1.5f * (r + 1)), to16(-2.0f * r)};
    ASSERT_TRUE(comm.AllReduce(Buffer{h.data(), t, h.size()}, ReduceOp::kSum, Deadline()).ok()) << DTypeName(t);
    EXPECT_EQ(from16(h[0]), static_cast<float>(1.5 * sum_1_to_n)) << DTypeName(t);
    EXPECT_EQ(from16(h[1]), static_cast<float>(-2.0 * n * (n - 1) / 2)) << DTypeName(t);
    std::vector<uint16_t> lo = {to16(0.25f * (r + 1))}, hi = {to16(0.25f * (r + 1))};
    ASSERT_TRUE(comm.AllReduce(Buffer{lo.data(), t, 1}, ReduceOp::kMin, Deadline()).ok());
    ASSERT_TRUE(comm.AllReduce(Buffer{hi.data(), t, 1}, ReduceOp::kMax, Deadline()).ok());
    EXPECT_EQ(from16(lo[0]), 0.25f) << DTypeName(t);
    EXPECT_EQ(from16(hi[0]), 0.25f * n) << DTypeName(t);
  }
  // A device buffer where the backend takes host buffers only: refused, nothing poisoned.
  if (!comm.device_buffers()) {
    float x = 0;
    auto p = comm.StartAllReduce(Buffer{&x, DType::kFloat32, 1, /*device=*/0}, ReduceOp::kSum, Deadline());
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(p.status().message()).find("float32[1] on cuda:0"), std::string::npos) << p.status();
    EXPECT_TRUE(comm.poisoned().ok());
  }
}

void CheckAllGather(Communicator& comm) {
  const int n = comm.world_size();
  std::vector<double> send = {static_cast<double>(comm.rank()), 10.0 * comm.rank()};
  std::vector<double> recv(2 * static_cast<size_t>(n), -1);
  ASSERT_TRUE(comm.AllGather(send, absl::MakeSpan(recv), Deadline()).ok());
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(recv[2 * i], i);
    EXPECT_EQ(recv[2 * i + 1], 10.0 * i);
  }
  std::vector<double> wrong(1);
  EXPECT_EQ(comm.AllGather(send, absl::MakeSpan(wrong), Deadline()).code(), absl::StatusCode::kInvalidArgument);
}

void CheckBroadcast(Communicator& comm) {
  const int root = comm.world_size() - 1;
  for (size_t size : {size_t{0}, size_t{5}, size_t{1} << 20}) {
    std::string bytes;
    if (comm.rank() == root) {
      bytes.resize(size);
      for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(i * 31 + 7);
    } else {
      bytes = "stale";
    }
    ASSERT_TRUE(comm.Broadcast(bytes, root, Deadline()).ok());
    ASSERT_EQ(bytes.size(), size);
    for (size_t i = 0; i < size; i += 997) EXPECT_EQ(bytes[i], static_cast<char>(i * 31 + 7));
  }
  std::string b;
  EXPECT_EQ(comm.Broadcast(b, comm.world_size(), Deadline()).code(), absl::StatusCode::kInvalidArgument);
}

void CheckBarrier(Communicator& comm) {
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(comm.Barrier(Deadline()).ok());
}

void CheckEngineAgreement(Communicator& comm) {
  const int n = comm.world_size();
  const int r = comm.rank();
  std::vector<int> data = {0, 1, 2, 3};
  // TerminateOnNan: only the last rank sees NaN, at iteration 3.
  {
    Engine engine([&](Engine& e, const int&) {
      return (r == n - 1 && e.state().iteration == 3) ? std::numeric_limits<double>::quiet_NaN() : 1.0;
    });
    engine.set_communicator(&comm);
    engine.set_verify_agreement(true);
    TerminateOnNan ton;
    engine.On(Events::IterationCompleted(), ton);
    ASSERT_TRUE(engine.Run(data, {.max_epochs = 3}).ok());
    EXPECT_EQ(engine.state().iteration, 3);
    EXPECT_TRUE(engine.should_terminate());
    EXPECT_EQ(ton.bad_ranks(), std::vector<int>{n - 1});
  }
  // EarlyStopping on per-rank scores: rank r's score is scores[epoch] + r; the MEAN makes every
  // rank see the same sequence and stop at the same epoch; plus TerminateOnNan on the same
  // firing: still one collective per firing.
  {
    std::vector<double> scores = {0.5, 0.6, 0.55, 0.58, 0.59, 0.57, 0.9};
    Engine trainer([](Engine&, const int&) { return 1.0; });
    trainer.set_communicator(&comm);
    auto es = EarlyStopping::Create(
        {.patience = 3, .score_function = [&](const Engine& e) { return scores[e.state().epoch - 1] + 0.01 * r; }},
        trainer);
    ASSERT_TRUE(es.ok());
    trainer.On(Events::EpochCompleted(), **es);
    trainer.On(Events::EpochCompleted(), TerminateOnNan());
    const int64_t before = comm.collectives();
    ASSERT_TRUE(trainer.Run(data, {.max_epochs = 7}).ok());
    EXPECT_EQ(trainer.state().epoch, 5);
    // One per EPOCH_COMPLETED, two handlers fused; a single process agrees without calling its
    // communicator (Consensus copies the proposals itself).
    // + 1: the Run's agreement at start (Engine::Run, several ranks only).
    EXPECT_EQ(comm.collectives() - before, n == 1 ? 0 : 5 + 1);
    EXPECT_EQ(trainer.agreements(), 5);
  }
}

int RunFaultScenario(Communicator& comm, const std::string& kind, int victim) {
  std::vector<int> data(100, 0);
  Engine engine([&](Engine& e, const int&) {
    if (comm.rank() == victim && e.state().iteration == 3) {
      std::fprintf(stderr, "rank %d: %s at iteration 3\n", victim, kind.c_str());
      std::fflush(nullptr);
      if (kind == "stall" || kind == "swallow") {
        // A stopped process dies only once continued: a watchdog continues it after the
        // survivors have reported (at their 3 s deadline), so that the launcher tearing the job
        // down does not wait out its kill timeout (torchrun: 30 s) for it.
        const pid_t stopped = ::getpid();
        if (::fork() == 0) {
          // None of the parent's sockets or pipes (its output included): a peer or the launcher
          // must see them close when the parent dies, not 8 s later.
          ::close_range(0, ~0U, 0);
          ::sleep(8);
          ::kill(stopped, SIGCONT);
          ::_exit(0);
        }
        ::raise(SIGSTOP);
      }
      ::_exit(kind == "leave" ? 0 : 9);
    }
    return 1.0;
  });
  engine.set_communicator(&comm);
  engine.set_collective_timeout(absl::Seconds(3));
  engine.On(Events::IterationCompleted(), TerminateOnNan());
  int observed = 0;
  if (kind == "swallow") {
    engine.On(Events::ExceptionRaised(), [&](Engine&, std::exception_ptr) {
      ++observed;  // logs and swallows, as an ignite user's handler would
    });
  }
  const absl::Time start = absl::Now();
  const absl::Status s = engine.Run(data);
  std::printf("rank %d: %s after %.1fs (EXCEPTION_RAISED handler called %d time(s))\n", comm.rank(),
              s.ToString().c_str(), absl::ToDoubleSeconds(absl::Now() - start), observed);
  std::fflush(stdout);
  return s.ok() ? 0 : 1;
}

int RunKindsScenario(Communicator& comm, int victim) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = absl::Now() + absl::Seconds(3);
  absl::Status s;
  std::vector<float> gradients(50858, 1.0f);
  std::vector<double> metric(4, 1.0);
  if (comm.rank() == victim) {
    s = comm.AllReduce(absl::MakeSpan(metric), ReduceOp::kSum, deadline);
  } else {
    s = comm.AllReduce(Buffer{gradients.data(), DType::kFloat32, gradients.size()}, ReduceOp::kSum, deadline);
  }
  std::printf("rank %d: %s after %.1fs (strict %d)\n", comm.rank(), s.ToString().c_str(),
              absl::ToDoubleSeconds(absl::Now() - start), comm.strict() ? 1 : 0);
  std::fflush(stdout);
  return s.ok() ? 0 : 1;
}

// The divergent programs (see the top of the file): "handler_error", "order", "extra".
int RunDivergenceScenario(std::unique_ptr<Communicator> comm, const std::string& kind, int victim) {
  const int rank = comm->rank();
  ember::dist::World world(std::move(comm));
  std::vector<int> data(4, 0);
  std::vector<double> decided;
  ember::Engine evaluator([](ember::Engine&, const int&) { return 1.0; });
  evaluator.set_collective_timeout(absl::Seconds(60));  // a wait for it would show in the time
  probes::AccuracyProbe accuracy;
  probes::LossProbe loss, extra;
  accuracy.decided = loss.decided = extra.decided = &decided;
  if (kind == "handler_error" || kind == "handler_error_two") {
    // handler_error_two: ranks victim - 1 and victim fail at once.
    const bool fails = rank == victim || (kind == "handler_error_two" && rank == victim - 1);
    evaluator.On(ember::Events::Completed(), [&, fails](ember::Engine&) -> absl::Status {
      if (fails) return absl::InternalError("handler failed on purpose");
      return absl::OkStatus();
    });
    evaluator.On(ember::Events::Completed(), accuracy);
  } else {
    // Attached once the run started (after Engine::Run's start-of-run agreement on the layout):
    // only the agreement's own identity can catch it.
    evaluator.On(ember::Events::Started(), [&](ember::Engine& e) {
      if (kind == "order" && rank == victim) {
        e.On(ember::Events::Completed(), loss);
        e.On(ember::Events::Completed(), accuracy);
      } else {
        e.On(ember::Events::Completed(), accuracy);
        e.On(ember::Events::Completed(), loss);
      }
      if (kind == "extra" && rank == victim) e.On(ember::Events::Completed(), extra);
    });
  }
  const absl::Time start = absl::Now();
  absl::Status s = evaluator.Run(data);
  std::string values;
  for (double v : decided) values += std::to_string(v) + " ";
  std::printf("rank %d: run: %s after %.1fs (decided %zu time(s): %s)\n", rank, s.ToString().c_str(),
              absl::ToDoubleSeconds(absl::Now() - start), decided.size(), values.c_str());
  std::fflush(stdout);
  absl::Status shutdown = world.Shutdown(absl::Seconds(20));
  std::printf("rank %d: shutdown: %s\n", rank, shutdown.ToString().c_str());
  std::fflush(stdout);
  // Every rank met (above) before any exits; a launcher ends the job at the first non-zero exit,
  // so give every rank the moment it needs to print this line too.
  absl::SleepFor(absl::Seconds(1));
  return s.ok() && shutdown.ok() ? 0 : 1;
}

}  // namespace ember::dist::testing
