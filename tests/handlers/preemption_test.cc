#include "handlers/preemption.h"

#include <signal.h>

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

}  // namespace
}  // namespace ember
