#include "handlers/preemption.h"

#include "absl/time/clock.h"

#include <signal.h>

#include <cstdlib>

#include "distributed/testing/fake_world.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

TEST(Preemption, ASignalOnOneRankStopsEveryRankAtTheSameIteration) {
  Preemption preemption_handlers_installed;
  Preemption::Clear();
  dist::testing::FakeWorld world(3);
  int64_t stopped_at[3] = {0, 0, 0};
  std::string by[3];
  world.RunOnEveryRank([&](dist::Communicator& c) {
    Engine e([](Engine&) {});
    e.set_communicator(&c);
    Preemption preemption;
    if (c.rank() == 2) {
      // The signal arrives on rank 2 during iteration 5 (before its proposal).
      e.On(Events::IterationStarted(), [](Engine& en) {
        if (en.state().iteration == 5) ::raise(SIGTERM);
      });
    }
    e.On(Events::IterationCompleted(), preemption);
    ASSERT_TRUE(e.Run({.max_epochs = 3, .epoch_length = 10}).ok());
    stopped_at[c.rank()] = e.outcome().iteration;
    by[c.rank()] = e.outcome().terminated_by;
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(by[r], Preemption::kName) << "rank " << r;
    EXPECT_EQ(stopped_at[r], stopped_at[0]) << "rank " << r;
  }
  EXPECT_GE(stopped_at[0], 5);
  EXPECT_LE(stopped_at[0], 6) << "stopped at the next agreement";
  // When the signal arrived (recorded in the signal handler), for the signal-to-durable figure.
  ASSERT_TRUE(Preemption::signal_time().has_value());
  EXPECT_LE(*Preemption::signal_time(), absl::Now());
  EXPECT_GE(*Preemption::signal_time(), absl::Now() - absl::Seconds(60));
  Preemption::Clear();
  EXPECT_FALSE(Preemption::signal_time().has_value());
}

TEST(Preemption, TheStopWindowCoversTheSignalsWait) {
  Preemption installed;
  Preemption::Clear();
  Engine e([](Engine&) { absl::SleepFor(absl::Milliseconds(20)); });
  Preemption preemption;
  EXPECT_FALSE(preemption.stop_window().has_value());
  e.On(Events::IterationStarted(), [](Engine& en) {
    if (en.state().iteration == 5) ::raise(SIGTERM);
  });
  e.On(Events::IterationCompleted(), preemption);
  ASSERT_TRUE(e.Run({.max_epochs = 1, .epoch_length = 10}).ok());
  const absl::Time decided = absl::Now();
  EXPECT_EQ(e.outcome().iteration, 5);
  ASSERT_TRUE(preemption.stop_window().has_value());
  // From iteration 4's check to iteration 5's decision: one 20 ms step.
  EXPECT_GE(*preemption.stop_window(), absl::Milliseconds(20));
  // The signal (at the start of iteration 5) waited no longer than the window.
  ASSERT_TRUE(Preemption::signal_time().has_value());
  EXPECT_LE(decided - *Preemption::signal_time(), *preemption.stop_window() + absl::Milliseconds(50));
  Preemption::Clear();
}

TEST(Preemption, AtTheLastIterationOfAnEpochTheEpochEndRunsFirst) {
  Preemption installed;
  Preemption::Clear();
  Engine e([](Engine&) {});
  int epochs_completed = 0;
  int64_t evaluated_at = 0;
  e.On(Events::EpochCompleted(), [&](Engine& en) {  // the evaluation and the checkpoint, say
    ++epochs_completed;
    evaluated_at = en.state().iteration;
  });
  Preemption preemption;
  e.On(Events::IterationStarted(), [](Engine& en) {
    if (en.state().iteration == 20) ::raise(SIGTERM);  // during epoch 2's last iteration
  });
  e.On(Events::IterationCompleted(), preemption);
  ASSERT_TRUE(e.Run({.max_epochs = 5, .epoch_length = 10}).ok());
  EXPECT_EQ(e.outcome().terminated_by, Preemption::kName);
  EXPECT_EQ(e.outcome().iteration, 20);
  EXPECT_EQ(epochs_completed, 2) << "epoch 2's end must run before the stop";
  EXPECT_EQ(evaluated_at, 20);
  EXPECT_TRUE(preemption.stop_window().has_value());
  Preemption::Clear();
}

TEST(Preemption, ASignalBeforeTheFirstCheckHasNoWindow) {
  Preemption::Clear();
  Preemption::Request();  // during start-up
  Engine e([](Engine&) {});
  Preemption preemption;
  e.On(Events::IterationCompleted(), preemption);
  ASSERT_TRUE(e.Run({.max_epochs = 1, .epoch_length = 10}).ok());
  EXPECT_EQ(e.outcome().iteration, 1);
  EXPECT_TRUE(preemption.preempted());
  EXPECT_FALSE(preemption.stop_window().has_value()) << "start-up is outside the bound";
  Preemption::Clear();
}

TEST(Preemption, NoSignalNoStop) {
  Preemption::Clear();
  Engine e([](Engine&) {});
  Preemption preemption;
  e.On(Events::IterationCompleted(), preemption);
  ASSERT_TRUE(e.Run({.max_epochs = 2, .epoch_length = 4}).ok());
  EXPECT_TRUE(e.outcome().completed());
  EXPECT_FALSE(preemption.preempted());
}

// Issue 24.12: one request delivered twice (slurmstepd and torchrun both signal the worker) is
// one request: the run stops at the next iteration as after one signal. A different signal is a
// second request (exit now), and so is the same one after the window.
TEST(Preemption, TheSameSignalTwiceInAWindowIsOneRequest) {
  Preemption::Clear();
  Engine e([](Engine&) {});
  Preemption preemption;
  e.On(Events::IterationCompleted(), [](Engine& en) {
    if (en.state().iteration == 3) {
      ::raise(SIGTERM);
      ::raise(SIGTERM);
    }
  });
  e.On(Events::IterationCompleted(), preemption);
  ASSERT_TRUE(e.Run({.max_epochs = 1, .epoch_length = 10}).ok());
  EXPECT_TRUE(preemption.preempted());
  EXPECT_EQ(e.outcome().iteration, 3);
  Preemption::Clear();
}

TEST(PreemptionDeathTest, ADifferentSignalOrTheSameAfterTheWindowExitsNow) {
  EXPECT_EXIT(
      {
        Preemption::Clear();
        Preemption preemption;
        ::raise(SIGTERM);
        ::raise(SIGINT);
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(1), "second stop signal: exiting now");
  EXPECT_EXIT(
      {
        Preemption::Clear();
        Preemption preemption;
        ::raise(SIGUSR1);
        absl::SleepFor(Preemption::kRepeatWindow + absl::Milliseconds(200));
        ::raise(SIGUSR1);
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(1), "second stop signal: exiting now");
}

}  // namespace
}  // namespace ember
