// Engine behaviour at its edges: a failed collective cannot be swallowed by an EXCEPTION_RAISED
// handler; re-entrant firings (a Decide that fires an event with synchronized handlers, a handler
// that registers events) read only live memory (run under ASan in CI); the documented ignite
// differences around state().output and state().batch; the order of plain and synchronized
// handlers within one firing.
#include <stdlib.h>

#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "distributed/default_communicator.h"
#include "distributed/testing/fake_world.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A synchronized handler that proposes `value` and records what it saw; optionally fires
// `nested` (an event with synchronized handlers of its own) from its Decide.
class Recorder : public SynchronizedHandler {
 public:
  Recorder(std::string name, double value, std::vector<std::string>* trace)
      : name_(std::move(name)), value_(value), trace_(trace) {}
  size_t num_values() const override { return 2; }
  dist::Reduction reduction(size_t) const override { return dist::Reduction::kSum; }
  absl::Status Propose(Engine&, absl::Span<double> v) override {
    v[0] = value_;
    v[1] = value_ + 1;
    if (trace_) trace_->push_back("propose " + name_);
    return absl::OkStatus();
  }
  absl::Status Decide(Engine& engine, const Agreement& a) override {
    if (nested_) {
      // Grows the engine's handler table and runs a nested agreement before reading `a`.
      for (int i = 0; i < 64; ++i) {
        engine.RegisterEvents({Event::Custom(absl::StrCat("GROW_", name_, "_", i), EventAttr::kNone)});
      }
      if (absl::Status s = engine.FireEvent(*nested_); !s.ok()) return s;
    }
    seen.push_back(a.value(0));
    seen.push_back(a.value(1));
    seen.push_back(a.rank_value(0, 0));
    if (trace_) trace_->push_back("decide " + name_);
    return absl::OkStatus();
  }
  std::optional<Event> nested_;
  std::vector<double> seen;

 private:
  std::string name_;
  double value_;
  std::vector<std::string>* trace_;
};

// Issue 10.4: a Decide that fires an event with synchronized handlers (Checkpoint fires
// SAVED_CHECKPOINT) must not leave the outer firing reading moved memory.
TEST(Reentrancy, NestedAgreementFromDecideKeepsTheOuterResultsAlive) {
  std::vector<int> data(3, 0);
  Engine engine([](Engine&, const int&) {});
  const Event saved = Event::Custom("SAVED_SOMETHING", EventAttr::kNone);
  engine.RegisterEvents({saved});
  auto outer = std::make_unique<Recorder>("outer", 10, nullptr);
  auto later = std::make_unique<Recorder>("later", 20, nullptr);
  outer->nested_ = saved;
  Recorder* outer_ptr = outer.get();
  Recorder* later_ptr = later.get();
  // Many values in the nested firing, so that any shared buffer would have to grow.
  std::vector<Recorder*> inner;
  for (int i = 0; i < 40; ++i) {
    auto r = std::make_unique<Recorder>(absl::StrCat("inner", i), 100 + i, nullptr);
    inner.push_back(r.get());
    engine.On(saved, std::move(r));
  }
  engine.On(Events::IterationCompleted(), std::move(outer));
  engine.On(Events::IterationCompleted(), std::move(later));
  ASSERT_TRUE(engine.Run(data).ok());
  ASSERT_EQ(later_ptr->seen.size(), 9u);
  for (int it = 0; it < 3; ++it) {
    EXPECT_EQ(outer_ptr->seen[3 * it], 10);
    EXPECT_EQ(outer_ptr->seen[3 * it + 1], 11);
    EXPECT_EQ(later_ptr->seen[3 * it], 20);
    EXPECT_EQ(later_ptr->seen[3 * it + 1], 21);
    EXPECT_EQ(later_ptr->seen[3 * it + 2], 20);
  }
  EXPECT_EQ(inner[39]->seen.back(), 139);
}

// A plain handler that registers events while its event fires (the handler table grows).
TEST(Reentrancy, HandlerRegisteringEventsWhileFiring) {
  std::vector<int> data(2, 0);
  Engine engine([](Engine&, const int&) {});
  int calls = 0, after = 0;
  engine.On(Events::IterationCompleted(), [&](Engine& e) {
    for (int i = 0; i < 200; ++i) {
      e.RegisterEvents({Event::Custom(absl::StrCat("E", calls, "_", i), EventAttr::kNone)});
    }
    ++calls;
  });
  engine.On(Events::IterationCompleted(), [&] { ++after; });
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(after, 2);
}

// Issue 10.9 (documented difference): within one firing, the plain handlers run first (in
// registration order) and the synchronized ones decide after them, even when registered first;
// their Propose runs at their place.
TEST(Order, SynchronizedHandlersDecideAfterThePlainHandlersOfTheFiring) {
  std::vector<int> data(1, 0);
  Engine engine([](Engine&, const int&) {});
  std::vector<std::string> trace;
  engine.On(Events::EpochCompleted(), [&] { trace.push_back("plain 1"); });
  engine.On(Events::EpochCompleted(), std::make_unique<Recorder>("sync", 1, &trace));
  engine.On(Events::EpochCompleted(), [&] { trace.push_back("plain 2"); });
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_THAT(trace, ElementsAre("plain 1", "propose sync", "plain 2", "decide sync"));
}

// A stream of 0..n-1 of unknown length.
class Stream : public DataSource<int> {
 public:
  explicit Stream(int n) : n_(n) {}
  const int* Next() override {
    if (next_ >= n_) return nullptr;
    value_ = next_++;
    return &value_;
  }
  void Restart() override { next_ = 0; }

 private:
  int n_;
  int next_ = 0;
  int value_ = 0;
};

// Issue 10.8: as ignite, the last step's output is still there at EPOCH_COMPLETED and COMPLETED
// when data of unknown length runs out (ignite clears it only once a new batch was fetched).
TEST(IgniteParity, LastOutputSurvivesTheEndOfDataOfUnknownLength) {
  Stream data(3);
  Engine engine([](Engine&, const int& b) { return b * 10; });
  std::vector<std::string> seen;
  auto record = [&](const char* where) {
    return [&seen, where](Engine& e) {
      const int* out = e.state().output_as<int>();
      seen.push_back(absl::StrCat(where, " ", out ? absl::StrCat(*out) : "none"));
    };
  };
  engine.On(Events::GetBatchStarted(), record("GET_BATCH_STARTED"));
  engine.On(Events::EpochCompleted(), record("EPOCH_COMPLETED"));
  engine.On(Events::Completed(), record("COMPLETED"));
  ASSERT_TRUE(engine.Run(data, {.max_epochs = 1}).ok());
  EXPECT_THAT(seen, ElementsAre("GET_BATCH_STARTED none", "GET_BATCH_STARTED 0", "GET_BATCH_STARTED 10",
                                "GET_BATCH_STARTED 20", "EPOCH_COMPLETED 20", "COMPLETED 20"));
}

// Documented difference: Run() clears state().batch when it returns (the batch belongs to the
// data, which may be gone); the last output stays, as in ignite.
TEST(IgniteParity, RunClearsTheBatchButKeepsTheOutput) {
  std::vector<int> data = {1, 2, 3};
  Engine engine([](Engine&, const int& b) { return b; });
  const void* batch_at_completed = nullptr;
  engine.On(Events::Completed(), [&](Engine& e) { batch_at_completed = e.state().batch; });
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_NE(batch_at_completed, nullptr);
  EXPECT_EQ(engine.state().batch, nullptr);
  ASSERT_NE(engine.state().output_as<int>(), nullptr);
  EXPECT_EQ(*engine.state().output_as<int>(), 3);
}

// Issue 10.1: an ignite-style EXCEPTION_RAISED handler that logs and swallows everything must not
// swallow a failed collective: the run ends with the collective's error, naming the event and
// iteration, and the handler saw it once.
TEST(CollectiveFailure, IsNeverSwallowedByAnExceptionRaisedHandler) {
  dist::testing::FakeWorld world(2);
  std::vector<absl::Status> results(2);
  std::vector<int> observed(2, 0);
  std::vector<int64_t> iterations(2, 0);
  world.RunOnEveryRank([&](dist::Communicator& comm) {
    const int r = comm.rank();
    std::vector<int> data(10, 0);
    Engine engine([&](Engine& e, const int&) {
      if (r == 1 && e.state().iteration == 3) world.Kill(1);
    });
    engine.set_communicator(&comm);
    engine.set_collective_timeout(absl::Milliseconds(500));
    engine.On(Events::IterationCompleted(), std::make_unique<Recorder>("flag", 0, nullptr));
    engine.On(Events::ExceptionRaised(), [&observed, r](Engine&, std::exception_ptr) { ++observed[r]; });
    results[r] = engine.Run(data, {.max_epochs = 3});
    iterations[r] = engine.state().iteration;
  });
  EXPECT_EQ(results[0].code(), absl::StatusCode::kDeadlineExceeded) << results[0];
  EXPECT_THAT(std::string(results[0].message()),
              HasSubstr("at ITERATION_COMPLETED failed on rank 0 of 2"));
  EXPECT_THAT(std::string(results[0].message()), HasSubstr("[at ITERATION_COMPLETED, epoch 1, iteration 3]"));
  EXPECT_EQ(observed[0], 1);
  EXPECT_EQ(iterations[0], 3) << "the run went on after the failed collective";
  EXPECT_FALSE(results[1].ok());
}

// ---- The outcome of a run (issue 11) -------------------------------------------------------

TEST(RunOutcome, SaysCompletedTerminatedByWhomOrFailed) {
  std::vector<int> data = {1, 2, 3};
  Engine engine([](Engine&, const int&) {});
  EXPECT_EQ(engine.outcome().kind, Engine::RunOutcome::Kind::kNotRun);
  ASSERT_TRUE(engine.Run(data, {.max_epochs = 2}).ok());
  EXPECT_TRUE(engine.outcome().completed());
  EXPECT_EQ(engine.outcome().iteration, 6);
  EXPECT_EQ(engine.outcome().Summary(), "completed at epoch 2");

  Engine stopped([](Engine&, const int&) {});
  stopped.On(Events::IterationCompleted(), [](Engine& e) {
    if (e.state().iteration == 4) e.TerminateBy("NanGuard");
  });
  ASSERT_TRUE(stopped.Run(data, {.max_epochs = 3}).ok());
  const Engine::RunOutcome& o = stopped.outcome();
  EXPECT_TRUE(o.terminated());
  EXPECT_EQ(o.terminated_by, "NanGuard");
  ASSERT_TRUE(o.terminated_at.has_value());
  EXPECT_EQ(*o.terminated_at, Events::IterationCompleted());
  EXPECT_EQ(o.iteration, 4);
  EXPECT_EQ(o.epoch, 2);
  EXPECT_EQ(o.Summary(), "terminated by NanGuard at epoch 2");

  Engine failing([](Engine& e, const int&) -> absl::Status {
    return e.state().iteration == 2 ? absl::InternalError("boom") : absl::OkStatus();
  });
  EXPECT_FALSE(failing.Run(data).ok());
  EXPECT_EQ(failing.outcome().kind, Engine::RunOutcome::Kind::kFailed);
  EXPECT_THAT(std::string(failing.outcome().status.message()), HasSubstr("boom"));
  EXPECT_THAT(failing.outcome().Summary(), HasSubstr("failed at epoch 1: "));
  EXPECT_THAT(failing.outcome().Summary(), HasSubstr("boom"));
  // A later run that completes says so (the outcome is the last run's).
  Engine again([](Engine& e, const int&) {});
  bool stop_once = true;
  again.On(Events::Started(), [&](Engine& e) {
    if (std::exchange(stop_once, false)) e.Terminate();
  });
  ASSERT_TRUE(again.Run(data).ok());
  EXPECT_TRUE(again.outcome().terminated());
  EXPECT_EQ(again.outcome().terminated_by, "");
  ASSERT_TRUE(again.Run(data, {.max_epochs = 2}).ok());
  EXPECT_TRUE(again.outcome().completed());
}

// ---- Synchronize: one synchronized handler outside a run (issue 14) ------------------------

class SumOfRanks final : public SynchronizedHandler {
 public:
  size_t num_values() const override { return 1; }
  dist::Reduction reduction(size_t) const override { return dist::Reduction::kSum; }
  absl::Status Propose(Engine& e, absl::Span<double> v) override {
    v[0] = e.communicator().rank() + 1;
    return absl::OkStatus();
  }
  absl::Status Decide(Engine&, const Agreement& a) override {
    agreed = a.value(0);
    return absl::OkStatus();
  }
  double agreed = 0;
};

TEST(Synchronize, ReducesOneHandlersProposalAcrossRanksOutsideARun) {
  dist::testing::FakeWorld world(2);
  SumOfRanks handlers[2];
  world.RunOnEveryRank([&](dist::Communicator& c) {
    Engine engine([](Engine&, const int&) {});
    engine.set_communicator(&c);
    std::vector<int> data = {1, 2};
    ASSERT_TRUE(engine.Run(data).ok());
    ASSERT_TRUE(engine.Synchronize(handlers[c.rank()]).ok());
  });
  EXPECT_EQ(handlers[0].agreed, 3);
  EXPECT_EQ(handlers[1].agreed, 3);
  // Inside a run it is refused.
  Engine engine([&handlers](Engine& e, const int&) -> absl::Status { return e.Synchronize(handlers[0]); });
  std::vector<int> data = {1};
  absl::Status s = engine.Run(data);
  EXPECT_THAT(std::string(s.message()), HasSubstr("Synchronize() is for use outside Run()"));
}

// ---- The default communicator and the multi-rank guard (issue 11) ----------------------------

class LauncherEnv {  // a torchrun-style environment for one test
 public:
  explicit LauncherEnv(int world) {
    ::setenv("RANK", "0", 1);
    ::setenv("WORLD_SIZE", absl::StrCat(world).c_str(), 1);
    ::setenv("LOCAL_RANK", "0", 1);
    ::setenv("LOCAL_WORLD_SIZE", absl::StrCat(world).c_str(), 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", "29500", 1);
  }
  ~LauncherEnv() {
    for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) ::unsetenv(v);
  }
};

// Engine::AtOutermostRunEnd: work left by a handler of a nested run (an evaluator inside the
// trainer's EPOCH_COMPLETED) runs once, at the end of the trainer's run, before Run() returns;
// its error becomes the run's; after a failed run it is told so; outside a run nothing registers.
TEST(AtOutermostRunEnd, RunsOnceWhenTheOutermostRunEndsAndReportsItsError) {
  auto key = std::make_shared<int>(0);
  EXPECT_FALSE(Engine::AtOutermostRunEnd(key, [](bool) { return absl::OkStatus(); }));
  std::vector<std::string> trace;
  absl::Status work_result = absl::OkStatus();
  std::vector<int> data = {1, 2};
  Engine evaluator([](Engine&, const int&) {});
  evaluator.On(Events::Completed(), [&](Engine& e) {
    trace.push_back(absl::StrCat("evaluated ", e.state().epoch));
    // Registered at every evaluation, under one key: one piece of work.
    EXPECT_TRUE(Engine::AtOutermostRunEnd(key, [&](bool ok) {
      trace.push_back(absl::StrCat("work run_ok=", ok));
      return work_result;
    }));
  });
  bool fail = false;
  Engine trainer([](Engine&, const int&) {});
  trainer.On(Events::EpochCompleted(), [&]() -> absl::Status { return evaluator.Run(data); });
  trainer.On(Events::EpochCompleted(), [&]() -> absl::Status {
    return fail ? absl::InternalError("failed on purpose") : absl::OkStatus();
  });
  trainer.On(Events::Completed(), [&] { trace.push_back("trainer completed"); });
  ASSERT_TRUE(trainer.Run(data, {.max_epochs = 2}).ok());
  EXPECT_THAT(trace, ElementsAre("evaluated 1", "evaluated 1", "trainer completed", "work run_ok=1"));
  // Its error is the run's.
  trace.clear();
  work_result = absl::DataLossError("the background write failed");
  absl::Status s = trainer.Run(data, {.max_epochs = 3});
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_EQ(trainer.outcome().kind, Engine::RunOutcome::Kind::kFailed);
  EXPECT_THAT(trace, ElementsAre("evaluated 1", "trainer completed", "work run_ok=1"));
  // A failed run: the work runs, told so, and the run's own error is the one returned.
  trace.clear();
  fail = true;
  s = trainer.Run(data, {.max_epochs = 4});
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_THAT(trace, ElementsAre("evaluated 1", "work run_ok=0"));
  // Nothing is left registered once the run is over.
  EXPECT_FALSE(Engine::AtOutermostRunEnd(key, [](bool) { return absl::OkStatus(); }));
}

// The owner identifies the work by its control block, not its address: work of an owner destroyed
// mid-run is skipped, and a new owner (even at a reused address) registers its own.
TEST(AtOutermostRunEnd, AnExpiredOwnersWorkIsSkippedAndANewOwnerIsNotMistakenForIt) {
  std::vector<std::string> trace;
  std::vector<int> data = {1};
  auto owner = std::make_shared<int>(1);
  Engine trainer([](Engine&, const int&) {});
  trainer.On(Events::EpochCompleted(), [&](Engine& e) {
    const int epoch = static_cast<int>(e.state().epoch);
    Engine::AtOutermostRunEnd(owner, [&trace, epoch](bool) {
      trace.push_back(absl::StrCat("work of epoch ", epoch));
      return absl::OkStatus();
    });
    if (epoch == 1) {
      owner.reset();  // the first owner is gone; the next may take its address
      owner = std::make_shared<int>(2);
    }
  });
  // Work registered while end-of-run work runs is awaited too, never mistaken for the finished one.
  auto late = std::make_shared<int>(3);
  trainer.On(Events::Completed(), [&] {
    Engine::AtOutermostRunEnd(late, [&](bool) {
      trace.push_back("first");
      Engine::AtOutermostRunEnd(late, [&](bool) {
        trace.push_back("registered by the first");
        return absl::OkStatus();
      });
      return absl::OkStatus();
    });
  });
  ASSERT_TRUE(trainer.Run(data, {.max_epochs = 2}).ok());
  EXPECT_THAT(trace, ElementsAre("work of epoch 2", "first", "registered by the first"));
}

TEST(DefaultCommunicator, EnginesCreatedAfterItUseIt) {
  dist::testing::FakeWorld world(1);
  dist::Communicator* previous = dist::SetDefaultCommunicator(world.comm(0));
  Engine engine([](Engine&) {});
  EXPECT_EQ(&engine.communicator(), world.comm(0));
  dist::SetDefaultCommunicator(previous);
  Engine later([](Engine&) {});
  EXPECT_NE(&later.communicator(), world.comm(0)) << "created once the default was cleared";
}

TEST(DefaultCommunicator, ASynchronizedHandlerNeverAgreesAloneInAMultiRankJob) {
  LauncherEnv env(4);
  Recorder recorder("r", 1, nullptr);
  Engine engine([](Engine&) {});
  engine.On(Events::IterationCompleted(), recorder);
  absl::Status s = engine.Run({.max_epochs = 1, .epoch_length = 2});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("this process is one of 4 ranks"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("LaunchWorld()"));
  EXPECT_TRUE(recorder.seen.empty()) << "nothing ran";
  // Plain handlers only: nothing to agree on, so the engine runs (a rank-local evaluator).
  Engine local([](Engine&) {});
  local.On(Events::IterationCompleted(), [] {});
  EXPECT_TRUE(local.Run({.max_epochs = 1, .epoch_length = 2}).ok());
  // An explicit choice is respected.
  dist::testing::FakeWorld one(1);
  engine.set_communicator(one.comm(0));
  EXPECT_TRUE(engine.Run({.max_epochs = 1, .epoch_length = 2}).ok());
}

}  // namespace
}  // namespace ember
