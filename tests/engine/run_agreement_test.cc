// Engine::Run agrees once, at start, on what defines the run (epoch length, max_epochs,
// max_iters, the starting iteration, the validity of Run's arguments, the synchronized handlers
// per event): on fake worlds of 2 and 4 ranks where one rank differs, every rank fails with the
// same error naming the setting and each rank's value, before any event fires (no handler ran,
// no step ran), and the communicator is poisoned.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "distributed/testing/fake_world.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

using ::testing::HasSubstr;

// Synchronized handlers that only vote (nothing is decided).
class VoteA : public SynchronizedHandler {
 public:
  size_t num_values() const override { return 1; }
  dist::Reduction reduction(size_t) const override { return dist::Reduction::kMax; }
  absl::Status Propose(Engine&, absl::Span<double> v) override {
    v[0] = 1;
    return absl::OkStatus();
  }
  absl::Status Decide(Engine&, const Agreement&) override { return absl::OkStatus(); }
};

class VoteB : public SynchronizedHandler {
 public:
  size_t num_values() const override { return 2; }
  dist::Reduction reduction(size_t i) const override { return i == 0 ? dist::Reduction::kMin : dist::Reduction::kSum; }
  absl::Status Propose(Engine&, absl::Span<double> v) override {
    v[0] = 1;
    v[1] = 2;
    return absl::OkStatus();
  }
  absl::Status Decide(Engine&, const Agreement&) override { return absl::OkStatus(); }
};

struct RankResult {
  absl::Status status;
  int steps = 0;
  int started = 0;  // STARTED handlers run
  int64_t collectives = 0;
  absl::Status after;  // a collective after the run
};

// Runs one engine per rank; `divergent` changes rank `odd` (the last one) in one way.
std::vector<RankResult> RunWorld(int n, const std::string& divergent) {
  dist::testing::FakeWorld world(n);
  std::vector<RankResult> out(n);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    const int r = c.rank();
    const bool odd = r == n - 1;
    RankResult& res = out[r];
    Engine engine([&](Engine&, const int&) {
      ++res.steps;
      return 0.0;
    });
    engine.set_communicator(&c);
    engine.set_collective_timeout(absl::Seconds(20));
    VoteA a;
    VoteB b;
    engine.On(Events::Started(), [&] { ++res.started; });
    if (divergent == "order" && odd) {
      engine.On(Events::Completed(), b);
      engine.On(Events::Completed(), a);
    } else {
      engine.On(Events::Completed(), a);
      engine.On(Events::Completed(), b);
    }
    if (!(divergent == "one_rank_only" && odd)) engine.On(Events::EpochCompleted(), a);
    if (divergent == "filtered" && odd) {
      engine.On(Events::IterationCompleted().Every(2), b);
    } else {
      engine.On(Events::IterationCompleted(), b);
    }
    // A plain handler on one rank only is allowed (a rank may log alone).
    if (r == 0) engine.On(Events::EpochCompleted(), [] {});
    std::vector<int> data(divergent == "epoch_length" && odd ? 5 : 4, 1);
    RunOptions options;
    options.max_epochs = 2;
    if (divergent == "max_epochs" && odd) options.max_epochs = 3;
    if (divergent == "invalid" && odd) options.max_epochs = 0;
    if (divergent == "verify" && odd) engine.set_verify_agreement(true);
    // Many handlers at one event (a layout longer than an error shows whole), the last differing.
    std::vector<std::unique_ptr<VoteA>> many;
    if (divergent == "long") {
      for (int k = 0; k < 30; ++k) engine.On(Events::Started(), *many.emplace_back(std::make_unique<VoteA>()));
      if (odd) {
        engine.On(Events::Started(), b);
      } else {
        engine.On(Events::Started(), a);
      }
    }
    res.status = engine.Run(data, options);
    res.collectives = c.collectives();
    res.after = c.Barrier(absl::Now() + absl::Seconds(20));
  });
  return out;
}

std::string Expected(const std::string& divergent, int n) {
  const std::string others = n == 2 ? "rank 0" : "ranks 0-2";
  const std::string last = n == 2 ? "rank 1" : "rank 3";
  if (divergent == "epoch_length") {
    return "Engine::Run differ across ranks: epoch_length is 4 on " + others + ", 5 on " + last;
  }
  if (divergent == "max_epochs") {
    return "Engine::Run differ across ranks: max_epochs is 2 on " + others + ", 3 on " + last;
  }
  if (divergent == "invalid") {
    return "Engine::Run differ across ranks: Run's arguments is valid on " + others +
           ", max_epochs must be >= 1, got 0 on " + last + "; epoch_length is 4 on " + others + ", None on " + last +
           "; max_epochs is 2 on " + others + ", None on " + last;
  }
  if (divergent == "order") {
    return "Engine::Run differ across ranks: synchronized handlers at COMPLETED is VoteA(MAX) then VoteB(MIN,SUM) "
           "on " + others + ", VoteB(MIN,SUM) then VoteA(MAX) on " + last;
  }
  if (divergent == "one_rank_only") {
    return "Engine::Run differ across ranks: synchronized handlers at EPOCH_COMPLETED is VoteA(MAX) on " + others +
           ", (absent) on " + last;
  }
  if (divergent == "long") {
    return "Engine::Run differ across ranks: synchronized handler 31 at STARTED is VoteA(MAX) on " + others +
           ", VoteB(MIN,SUM) on " + last;
  }
  if (divergent == "verify") {
    return "Engine::Run differ across ranks: verify_agreement is false on " + others + ", true on " + last;
  }
  if (divergent == "filtered") {
    return "Engine::Run differ across ranks: synchronized handlers at ITERATION_COMPLETED is VoteB(MIN,SUM) on " +
           others + ", VoteB(MIN,SUM; every=2) on " + last;
  }
  return "";
}

class RunAgreement : public ::testing::TestWithParam<int> {};

TEST_P(RunAgreement, TheSameRunOnEveryRankAgreesInOneCollective) {
  const int n = GetParam();
  for (const RankResult& res : RunWorld(n, "none")) {
    EXPECT_TRUE(res.status.ok()) << res.status;
    EXPECT_EQ(res.steps, 8);
    // 1 agreement at start + 8 ITERATION_COMPLETED + 2 EPOCH_COMPLETED + 1 COMPLETED firings.
    EXPECT_EQ(res.collectives, 1 + 8 + 2 + 1);
    EXPECT_TRUE(res.after.ok()) << res.after;
  }
}

TEST_P(RunAgreement, ADivergentRankFailsEveryRankBeforeAnyEvent) {
  const int n = GetParam();
  for (const std::string divergent : {"epoch_length", "max_epochs", "invalid", "order", "one_rank_only", "filtered", "verify", "long"}) {
    SCOPED_TRACE(divergent);
    const std::vector<RankResult> results = RunWorld(n, divergent);
    for (int r = 0; r < n; ++r) {
      SCOPED_TRACE(r);
      const RankResult& res = results[r];
      EXPECT_EQ(res.status.code(), absl::StatusCode::kInvalidArgument) << res.status;
      EXPECT_EQ(std::string(res.status.message()), Expected(divergent, n));
      EXPECT_EQ(res.started, 0) << "no event fired";
      EXPECT_EQ(res.steps, 0) << "no step ran";
      EXPECT_EQ(res.after.code(), absl::StatusCode::kFailedPrecondition) << res.after;
      EXPECT_THAT(std::string(res.after.message()), HasSubstr(Expected(divergent, n)));
    }
  }
}

TEST(RunAgreementAlone, AnEngineWithoutSynchronizedHandlersAgreesOnNothing) {
  dist::testing::FakeWorld world(2);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    Engine engine([](Engine&, const int&) { return 0.0; });
    engine.set_communicator(&c);
    engine.On(Events::EpochCompleted(), [] {});
    // Different lengths on each rank, no synchronized handler: nothing communicates, nothing to
    // agree on (an evaluator that rank 0 runs alone, say).
    std::vector<int> data(c.rank() == 0 ? 3 : 5, 1);
    EXPECT_TRUE(engine.Run(data).ok());
    EXPECT_EQ(c.collectives(), 0);
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, RunAgreement, ::testing::Values(2, 4));

}  // namespace
}  // namespace ember
