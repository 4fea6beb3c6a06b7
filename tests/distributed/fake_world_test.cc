// The conformance suite on the single-process communicator and on in-process fake worlds of 2
// and 4 ranks; then the faults only a fake world can stage deterministically: a stalled rank, a
// killed rank, diverging decisions.
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/consensus.h"
#include "distributed/root_action.h"
#include "distributed/single_process_communicator.h"
#include "distributed/testing/fake_world.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "handlers/terminate_on_nan.h"
#include "tests/distributed/communicator_checks.h"

namespace ember::dist {
namespace {

using ::testing::HasSubstr;

TEST(SingleProcess, Conformance) {
  SingleProcessCommunicator comm;
  testing::CheckAll(comm);
  EXPECT_EQ(comm.backend(), "single");
}

class FakeWorldConformance : public ::testing::TestWithParam<int> {};

TEST_P(FakeWorldConformance, AllChecks) {
  testing::FakeWorld world(GetParam());
  world.RunOnEveryRank([](Communicator& c) { testing::CheckAll(c); });
}

INSTANTIATE_TEST_SUITE_P(Sizes, FakeWorldConformance, ::testing::Values(1, 2, 4));

TEST(FakeWorldFaults, StalledRankMakesTheOthersFailAtTheDeadlineAndPoisons) {
  testing::FakeWorld world(3);
  world.Stall(1);
  std::vector<absl::Status> status(3);
  std::vector<double> elapsed(3);
  world.RunOnEveryRank([&](Communicator& c) {
    if (c.rank() == 1) return;  // a stalled process never even returns
    const absl::Time start = absl::Now();
    double v = 1;
    status[c.rank()] = c.AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kSum, start + absl::Milliseconds(200));
    elapsed[c.rank()] = absl::ToDoubleSeconds(absl::Now() - start);
  });
  for (int r : {0, 2}) {
    EXPECT_EQ(status[r].code(), absl::StatusCode::kDeadlineExceeded) << r;
    EXPECT_THAT(std::string(status[r].message()), HasSubstr("rank(s) 1 did not join"));
    EXPECT_LT(elapsed[r], 5.0);
    // Poisoned: the next call fails at once, naming the first error.
    double v = 1;
    absl::Status again = world.comm(r)->AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kSum, absl::Now() + absl::Seconds(5));
    EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(again.message()), HasSubstr("poisoned"));
  }
}

TEST(FakeWorldFaults, KilledRankMidRunFailsEveryEngineWithTheEventAndIteration) {
  testing::FakeWorld world(4);
  std::vector<absl::Status> status(4);
  std::vector<int64_t> iteration(4);
  world.RunOnEveryRank([&](Communicator& c) {
    std::vector<int> data(10, 0);
    Engine engine([&](Engine& e, const int&) {
      if (c.rank() == 2 && e.state().iteration == 5) {
        world.Kill(2);  // the process dies
        throw std::runtime_error("rank 2 crashed");
      }
      return 1.0;
    });
    engine.set_communicator(&c);
    engine.set_collective_timeout(absl::Milliseconds(300));
    engine.On(Events::IterationCompleted(), TerminateOnNan());
    status[c.rank()] = engine.Run(data);
    iteration[c.rank()] = engine.state().iteration;
  });
  EXPECT_THAT(std::string(status[2].message()), HasSubstr("rank 2 crashed"));
  for (int r : {0, 1, 3}) {
    SCOPED_TRACE(r);
    EXPECT_EQ(status[r].code(), absl::StatusCode::kDeadlineExceeded);
    EXPECT_THAT(std::string(status[r].message()), HasSubstr("at ITERATION_COMPLETED failed on rank"));
    EXPECT_THAT(std::string(status[r].message()), HasSubstr("rank(s) 2 did not join"));
    EXPECT_THAT(std::string(status[r].message()), HasSubstr("epoch 1, iteration 5]"));
    EXPECT_EQ(iteration[r], 5);
  }
}

// A deliberately broken synchronized handler that decides differently on rank 0: the debug
// digest catches the divergence instead of letting the ranks drift apart.
class Divergent : public SynchronizedHandler {
 public:
  size_t num_values() const override { return 1; }
  Reduction reduction(size_t) const override { return Reduction::kMax; }
  absl::Status Propose(Engine&, absl::Span<double> v) override {
    v[0] = 0;
    return absl::OkStatus();
  }
  absl::Status Decide(Engine& e, const Agreement&) override {
    if (e.communicator().rank() == 0 && e.state().iteration == 2) e.Terminate();
    return absl::OkStatus();
  }
};

TEST(FakeWorldFaults, DecisionDigestCatchesDivergingRanks) {
  testing::FakeWorld world(2);
  std::vector<absl::Status> status(2);
  world.RunOnEveryRank([&](Communicator& c) {
    std::vector<int> data = {0, 1, 2, 3};
    Engine engine([](Engine&, const int&) { return 1.0; });
    engine.set_communicator(&c);
    engine.set_verify_agreement(true);
    engine.On(Events::IterationCompleted(), Divergent());
    status[c.rank()] = engine.Run(data);
  });
  for (const absl::Status& s : status) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
    EXPECT_THAT(std::string(s.message()), HasSubstr("ranks diverged at ITERATION_COMPLETED"));
  }
}

TEST(RootAction, EveryRankGetsTheRootsOutcome) {
  testing::FakeWorld world(3);
  std::vector<absl::Status> status(3);
  std::vector<int> ran(3, 0);
  world.RunOnEveryRank([&](Communicator& c) {
    status[c.rank()] = RunOnRoot(c, 1, absl::Now() + absl::Seconds(10), [&] {
      ++ran[c.rank()];
      return absl::ResourceExhaustedError("write /ckpt/model_3.pt: No space left on device");
    });
  });
  EXPECT_EQ(ran, (std::vector<int>{0, 1, 0}));
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(status[r].code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(std::string(status[r].message()), HasSubstr("/ckpt/model_3.pt: No space left on device"));
  }
  EXPECT_THAT(std::string(status[0].message()), HasSubstr("rank 1: "));
}

TEST(Consensus, ReductionsAreDeterministicAndNanAware) {
  testing::FakeWorld world(3);
  std::vector<std::vector<double>> reduced(3, std::vector<double>(5));
  world.RunOnEveryRank([&](Communicator& c) {
    Consensus consensus(&c);
    const double r = c.rank();
    std::vector<double> values = {r, r, r == 1 ? std::nan("") : r, r == 2 ? std::nan("") : 0.0, 0.1 * (r + 1)};
    std::vector<Reduction> ops = {Reduction::kMean, Reduction::kMax, Reduction::kMin, Reduction::kAnyNonZero, Reduction::kSum};
    std::vector<double> per_rank(15);
    ASSERT_TRUE(consensus.Reduce(values, ops, absl::MakeSpan(reduced[c.rank()]), absl::MakeSpan(per_rank),
                                 absl::Now() + absl::Seconds(10)).ok());
    EXPECT_EQ(per_rank[5 * 2 + 0], 2.0);
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(reduced[r][0], 1.0);
    EXPECT_EQ(reduced[r][1], 2.0);
    EXPECT_EQ(reduced[r][2], 0.0);  // MIN skips NaN
    EXPECT_EQ(reduced[r][3], 1.0);  // NaN counts as "non-zero": a NaN flag is a bad flag
    EXPECT_EQ(std::memcmp(&reduced[r][4], &reduced[0][4], sizeof(double)), 0);  // bitwise identical
  }
}

}  // namespace
}  // namespace ember::dist
