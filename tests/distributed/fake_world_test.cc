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

#include "absl/strings/str_cat.h"
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

namespace ember::dist {
namespace {

using ::testing::HasSubstr;

// Failure notices (communicator.h): a rank that fails outside a collective makes every peer's
// collective, current or next, fail promptly with its error; never a deadline waited out.
TEST(FakeWorldNotices, ARankThatFailsOutsideACollectiveTellsThePeers) {
  testing::FakeWorld world(3);
  absl::Status got[3];
  absl::Duration took[3];
  world.RunOnEveryRank([&](Communicator& c) {
    const absl::Time start = absl::Now();
    if (c.rank() == 1) {
      absl::SleepFor(absl::Milliseconds(50));  // the others are waiting in the all-gather
      c.Fail(absl::InternalError("handler failed on purpose"));
      got[1] = c.poisoned();
    } else {
      std::vector<double> all(3);
      const double mine = 1.0;
      got[c.rank()] = c.AllGather(absl::MakeConstSpan(&mine, 1), absl::MakeSpan(all), absl::Now() + absl::Seconds(60));
    }
    took[c.rank()] = absl::Now() - start;
    // Poisoned everywhere: the next collective fails at once, naming the first error.
    EXPECT_EQ(c.Barrier(absl::Now() + absl::Seconds(60)).code(), absl::StatusCode::kFailedPrecondition);
  });
  EXPECT_EQ(got[1].code(), absl::StatusCode::kInternal);
  for (int r : {0, 2}) {
    SCOPED_TRACE(r);
    EXPECT_EQ(got[r].code(), absl::StatusCode::kAborted);
    EXPECT_THAT(std::string(got[r].message()), HasSubstr("rank 1 failed: INTERNAL: handler failed on purpose"));
    EXPECT_TRUE(Communicator::IsPeerFailure(got[r]));
    EXPECT_LT(took[r], absl::Seconds(10));
  }
}

// A DEADLINE_EXCEEDED of this rank's own (a user handler's, another communicator's) that ends its
// run is news to the peers: unlike a collective's missed deadline, no peer saw it.
TEST(FakeWorldNotices, ALocalDeadlineErrorIsSentToo) {
  testing::FakeWorld world(2);
  absl::Status got[2], met[2];
  world.RunOnEveryRank([&](Communicator& c) {
    if (c.rank() == 1) {
      absl::SleepFor(absl::Milliseconds(50));
      c.Fail(absl::DeadlineExceededError("the data loader timed out"));
      got[1] = c.poisoned();
    } else {
      double v = 1;
      got[0] = c.AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kSum, absl::Now() + absl::Seconds(60));
    }
    EXPECT_TRUE(c.may_meet()) << c.rank();
    met[c.rank()] = c.Meet(absl::Now() + absl::Seconds(60));
  });
  EXPECT_EQ(got[0].code(), absl::StatusCode::kAborted) << got[0];
  EXPECT_THAT(std::string(got[0].message()), HasSubstr("rank 1 failed: DEADLINE_EXCEEDED: the data loader timed out"));
  EXPECT_EQ(met[1].code(), absl::StatusCode::kDeadlineExceeded) << met[1];
  EXPECT_EQ(met[0].code(), absl::StatusCode::kAborted) << met[0];
}

// A save that fails on the root while a peer stalls: the outcome's broadcast cannot complete, and
// the root tells the healthy peers the save's error instead of leaving them to a deadline or a bare
// "broadcast given up on".
TEST(FakeWorldNotices, ARootsFailedActionReachesTheHealthyPeersWhenAnotherStalls) {
  testing::FakeWorld world(3);
  absl::Status got[3];
  absl::Duration took[3];
  world.Stall(2);
  world.RunOnEveryRank([&](Communicator& c) {
    if (c.rank() == 2) return;  // a stalled process never comes to the outcome's broadcast
    const absl::Time start = absl::Now();
    got[c.rank()] = RunOnRoot(
        c, 0, absl::Now() + absl::Seconds(60),
        [] {
          absl::SleepFor(absl::Milliseconds(100));
          return absl::ResourceExhaustedError("write /ckpt/model_3.pt: No space left on device");
        },
        /*outcome_timeout=*/absl::Milliseconds(300));
    took[c.rank()] = absl::Now() - start;
  });
  EXPECT_EQ(got[0].code(), absl::StatusCode::kResourceExhausted) << got[0];
  EXPECT_EQ(got[1].code(), absl::StatusCode::kAborted) << got[1];
  EXPECT_THAT(std::string(got[1].message()),
              HasSubstr("rank 0 failed: RESOURCE_EXHAUSTED: write /ckpt/model_3.pt: No space left on device"));
  EXPECT_LT(took[1], absl::Seconds(10)) << "the healthy peer waited toward its 60 s deadline";
}

// A peer's notice is not sent on: a rank that received one and then fails its run with it
// (wrapped by the engine, which drops the status's payload) tells nobody.
TEST(FakeWorldNotices, APeersNoticeIsNeverSentOnAsThisRanksFailure) {
  testing::FakeWorld world(3);
  absl::Status got[3];
  world.RunOnEveryRank([&](Communicator& c) {
    if (c.rank() == 2) {
      c.Fail(absl::InternalError("handler failed on purpose"));
      return;
    }
    double v = 1;
    if (c.rank() == 1) {
      absl::Status s = c.AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kSum, absl::Now() + absl::Seconds(60));
      EXPECT_TRUE(Communicator::IsPeerFailure(s)) << s;
      // As Engine::Run does, wrapped (the payload is gone), here even with another code.
      c.Fail(absl::InternalError(absl::StrCat("agreement failed: ", s.message())));
      return;
    }
    absl::SleepFor(absl::Milliseconds(300));  // rank 1 has failed and called Fail by now
    got[0] = c.AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kSum, absl::Now() + absl::Seconds(60));
  });
  EXPECT_THAT(std::string(got[0].message()), HasSubstr("rank 2 failed: INTERNAL: handler failed on purpose"));
  EXPECT_THAT(std::string(got[0].message()), ::testing::Not(HasSubstr("rank 1 failed")));
}

// After a collective's deadline (rank 2 stalled), rank 0's run fails with that deadline, wrapped
// by the engine, even with another code (an exception in a step becomes INTERNAL): Fail tells
// nobody, or rank 1, still waiting on rank 2, would name the healthy rank 0 as failed. An error
// that does not come from the deadline (a root's failed save) goes out through TellPeers.
TEST(FakeWorldNotices, AfterASilentDeadlineOnlyTellPeersSendsNews) {
  for (bool tell : {false, true}) {
    testing::FakeWorld world(3);
    absl::Status got;
    world.Stall(2);
    world.RunOnEveryRank([&](Communicator& c) {
      if (c.rank() == 2) return;
      double v = 1;
      if (c.rank() == 0) {
        absl::Status s = c.AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kSum, absl::Now() + absl::Milliseconds(100));
        EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
        if (tell) {
          c.TellPeers(absl::ResourceExhaustedError("disk full"));
        } else {
          c.Fail(absl::InternalError(absl::StrCat("gradient sync failed: ", s.message())));
        }
        EXPECT_EQ(c.poisoned().code(), absl::StatusCode::kDeadlineExceeded) << "the first error stays the poison";
        return;
      }
      got = c.AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kSum, absl::Now() + absl::Milliseconds(1500));
    });
    if (tell) {
      EXPECT_EQ(got.code(), absl::StatusCode::kAborted) << got;
      EXPECT_THAT(std::string(got.message()), HasSubstr("rank 0 failed: RESOURCE_EXHAUSTED: disk full"));
    } else {
      EXPECT_EQ(got.code(), absl::StatusCode::kDeadlineExceeded) << "a healthy rank was named: " << got;
      EXPECT_THAT(std::string(got.message()), ::testing::Not(HasSubstr("rank 0 failed")));
    }
  }
}

// A collective that failed in the transport (every rank in it sees its own failure) tells nobody;
// one that failed through this rank's own fault (a CUDA error of its kernels: LocalFault) does.
TEST(FakeWorldNotices, OnlyALocalFaultOfAFailedCollectiveIsSent) {
  for (bool local : {false, true}) {
    testing::FakeWorld world(2);
    absl::Status got;
    world.RunOnEveryRank([&](Communicator& c) {
      if (c.rank() == 1) {
        absl::Status fault = absl::InternalError("cudaEventQuery: an illegal memory access was encountered");
        c.CollectiveFailed(local ? Communicator::LocalFault(fault) : fault);
        return;
      }
      absl::SleepFor(absl::Milliseconds(100));
      double v = 1;
      got = c.AllReduce(absl::MakeSpan(&v, 1), ReduceOp::kSum, absl::Now() + absl::Milliseconds(500));
    });
    if (local) {
      EXPECT_EQ(got.code(), absl::StatusCode::kAborted) << got;
      EXPECT_THAT(std::string(got.message()), HasSubstr("rank 1 failed: INTERNAL: cudaEventQuery: an illegal memory"));
    } else {
      EXPECT_EQ(got.code(), absl::StatusCode::kDeadlineExceeded) << "a transport failure was sent as news: " << got;
    }
  }
}

TEST(NoticeText, ALongErrorKeepsItsBeginningAndEndOnCharacterBoundaries) {
  std::string message(991, 'x');
  for (int i = 0; i < 200; ++i) message += "\xc3\xa9";  // 'é', two bytes
  message += " [at COMPLETED, epoch 1, iteration 4]";
  const std::string text = Communicator::NoticeText(absl::InternalError(message), 1020);
  EXPECT_LE(text.size(), 1020u);
  EXPECT_THAT(text, ::testing::StartsWith("INTERNAL: xxx"));
  EXPECT_THAT(text, ::testing::EndsWith("\xc3\xa9 [at COMPLETED, epoch 1, iteration 4]"));
  EXPECT_THAT(text, HasSubstr(" bytes cut ...] "));
  // Valid UTF-8: every continuation byte follows a lead byte or another continuation byte.
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char b = static_cast<unsigned char>(text[i]);
    if ((b & 0xC0) == 0x80) {
      ASSERT_GT(i, 0u);
      const unsigned char prev = static_cast<unsigned char>(text[i - 1]);
      EXPECT_TRUE((prev & 0xC0) == 0x80 || (prev & 0xE0) == 0xC0) << "a cut character at byte " << i;
    } else if ((b & 0xE0) == 0xC0) {
      ASSERT_LT(i + 1, text.size()) << "a lead byte without its continuation at the end";
      EXPECT_EQ(static_cast<unsigned char>(text[i + 1]) & 0xC0, 0x80) << "a cut character at byte " << i;
    }
  }
  EXPECT_EQ(Communicator::NoticeText(absl::InternalError("short"), 1020), "INTERNAL: short");
}

// Matching spaces: a barrier never completes another kind of collective (the case 1: the
// shutdown barrier completed a pending all-gather), and the shutdown meeting tells a rank that
// finished that another failed.
TEST(FakeWorldNotices, CollectivesOfDifferentKindsNeverMatchAndTheMeetingReportsFailures) {
  testing::FakeWorld world(2);
  absl::Status gather, barrier, meet[2];
  world.RunOnEveryRank([&](Communicator& c) {
    const absl::Time soon = absl::Now() + absl::Milliseconds(300);
    if (c.rank() == 0) {
      std::vector<double> all(2);
      const double mine = 0.9531;
      gather = c.AllGather(absl::MakeConstSpan(&mine, 1), absl::MakeSpan(all), soon);
    } else {
      barrier = c.Barrier(soon);
    }
  });
  // Neither completed the other: the first to reach its deadline fails, and its notice ends the
  // other's wait (whichever comes first).
  for (const absl::Status& s : {gather, barrier}) {
    EXPECT_TRUE(s.code() == absl::StatusCode::kDeadlineExceeded || s.code() == absl::StatusCode::kAborted) << s;
  }
  EXPECT_TRUE(gather.code() == absl::StatusCode::kDeadlineExceeded || barrier.code() == absl::StatusCode::kDeadlineExceeded);

  testing::FakeWorld world2(2);
  world2.RunOnEveryRank([&](Communicator& c) {
    if (c.rank() == 1) c.Fail(absl::InvalidArgumentError("bad flag"));
    EXPECT_TRUE(c.may_meet());
    meet[c.rank()] = c.Meet(absl::Now() + absl::Seconds(30));
  });
  EXPECT_EQ(meet[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(meet[0].code(), absl::StatusCode::kAborted) << meet[0];
  EXPECT_THAT(std::string(meet[0].message()), HasSubstr("rank 1 failed: INVALID_ARGUMENT: bad flag"));
}

// The agreement's identity (consensus.h): a different layout on one rank is one clear error on
// every rank, naming both sides, before any value is used; different counts never reach the
// transport as different sizes.
TEST(FakeWorldIdentity, AgreementsWithDifferentLayoutsFailOnEveryRank) {
  for (bool more_values : {false, true}) {
    SCOPED_TRACE(more_values);
    testing::FakeWorld world(3);
    absl::Status got[3];
    world.RunOnEveryRank([&](Communicator& c) {
      Consensus consensus(&c);
      const bool odd = c.rank() == 2;
      std::vector<double> values = {1.0, 2.0};
      std::vector<Reduction> ops = {Reduction::kMax, Reduction::kMean};
      if (odd && more_values) {
        values.push_back(3.0);
        ops.push_back(Reduction::kMean);
      } else if (odd) {
        std::swap(ops[0], ops[1]);
      }
      AgreementId id;
      id.event = 7;
      id.iteration = 200;
      id.layout = LayoutDigest(kLayoutSeed, "Probe", ops);
      id.describe = [&] { return absl::StrCat("runs ", ops.size(), " value(s), first ", ReductionName(ops[0])); };
      std::vector<double> reduced(values.size()), per_rank(values.size() * 3, -1.0);
      got[c.rank()] = consensus.Reduce(values, ops, absl::MakeSpan(reduced), absl::MakeSpan(per_rank),
                                       absl::Now() + absl::Seconds(30), id);
      EXPECT_THAT(per_rank, ::testing::Each(-1.0));  // nothing was handed out
      EXPECT_FALSE(c.poisoned().ok());
    });
    for (int r = 0; r < 3; ++r) {
      SCOPED_TRACE(r);
      EXPECT_EQ(got[r].code(), absl::StatusCode::kFailedPrecondition) << got[r];
      EXPECT_EQ(got[r].message(), got[0].message());
      EXPECT_THAT(std::string(got[r].message()),
                  HasSubstr(more_values ? "differ (number of values, layout)" : "differ (layout)"));
      EXPECT_THAT(std::string(got[r].message()), HasSubstr("rank 0 (agreement #0) runs 2 value(s), first MAX"));
      EXPECT_THAT(std::string(got[r].message()),
                  HasSubstr(more_values ? "rank 2 (agreement #0) runs 3 value(s), first MAX"
                                        : "rank 2 (agreement #0) runs 2 value(s), first MEAN"));
      EXPECT_THAT(std::string(got[r].message()), ::testing::Not(HasSubstr("rank 1 (")));
    }
  }
}

// Strict mode (EMBER_DISTRIBUTED_DEBUG=DETAIL; set_strict here): every collective's fingerprint
// is compared first; a mismatch names each rank's collective, on every rank, at once.
TEST(FakeWorldStrict, MismatchedCollectivesAreNamedBeforeTheyRun) {
  testing::FakeWorld world(3);
  absl::Status got[3];
  world.RunOnEveryRank([&](Communicator& c) {
    c.set_strict(true);
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    std::vector<double> metric(4, 1.0);
    ASSERT_TRUE(c.AllReduce(absl::MakeSpan(metric), ReduceOp::kSum, deadline).ok());  // matched: fine
    std::vector<float> gradients(50858, 1.0f);
    if (c.rank() == 1) {
      got[1] = c.AllReduce(absl::MakeSpan(metric), ReduceOp::kSum, deadline);
    } else {
      got[c.rank()] = c.AllReduce(Buffer{gradients.data(), DType::kFloat32, gradients.size()}, ReduceOp::kSum, deadline);
    }
    EXPECT_EQ(gradients[0], 1.0f);  // nothing reduced
  });
  for (int r = 0; r < 3; ++r) {
    SCOPED_TRACE(r);
    EXPECT_EQ(got[r].code(), absl::StatusCode::kFailedPrecondition) << got[r];
    EXPECT_THAT(std::string(got[r].message()),
                HasSubstr("collective #1 differs across ranks (EMBER_DISTRIBUTED_DEBUG=DETAIL): rank 0 StartAllReduce "
                          "of 50858 float32 (SUM) (#1); rank 1 AllReduce of 4 float64 (SUM) (#1); rank 2 StartAllReduce"));
  }
}

// More values than travel inline take a second exchange, once the headers agreed.
TEST(FakeWorldIdentity, ManyValuesTakeASecondExchangeAfterTheHeaders) {
  testing::FakeWorld world(2);
  world.RunOnEveryRank([&](Communicator& c) {
    Consensus consensus(&c);
    const size_t n = kAgreementInline + 5;
    std::vector<double> values(n, 1.0 + c.rank());
    std::vector<Reduction> ops(n, Reduction::kSum);
    std::vector<double> reduced(n), per_rank(2 * n);
    const int64_t before = c.collectives();
    ASSERT_TRUE(consensus.Reduce(values, ops, absl::MakeSpan(reduced), absl::MakeSpan(per_rank),
                                 absl::Now() + absl::Seconds(30), {.layout = 5})
                    .ok());
    EXPECT_EQ(c.collectives() - before, 2);
    EXPECT_THAT(reduced, ::testing::Each(3.0));
    // And a few values: one exchange.
    std::vector<double> one = {4.0 + c.rank()}, r1(1), p1(2);
    std::vector<Reduction> op1 = {Reduction::kMin};
    ASSERT_TRUE(consensus.Reduce(one, op1, absl::MakeSpan(r1), absl::MakeSpan(p1), absl::Now() + absl::Seconds(30)).ok());
    EXPECT_EQ(r1[0], 4.0);
    EXPECT_EQ(consensus.sequence(), 2u);
  });
}

}  // namespace
}  // namespace ember::dist
