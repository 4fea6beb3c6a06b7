// Engine behaviour beyond the recorded scenarios: data sources of unknown length, one-shot
// streams, runs without data, max_iters, step and handler outputs and errors, type checks.
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

int Identity(Engine&, const int& b) { return b; }

// A stream of 0..n-1 without a known length; restartable or one-shot.
class Counter : public DataSource<int> {
 public:
  Counter(int n, bool restartable) : n_(n), restartable_(restartable) {}
  const int* Next() override {
    if (next_ >= n_) return nullptr;
    value_ = next_++;
    return &value_;
  }
  void Restart() override {
    ++restarts_;
    if (restartable_ || restarts_ == 1) next_ = 0;  // the first Restart opens the stream
  }

 private:
  int n_;
  bool restartable_;
  int next_ = 0;
  int value_ = 0;
  int restarts_ = 0;
};

std::vector<std::string> NamesOf(Engine& engine, std::vector<std::string>* names) {
  for (Event e : {Events::EpochStarted(), Events::GetBatchStarted(),
                  Events::DataloaderStopIteration(), Events::IterationCompleted(),
                  Events::EpochCompleted(), Events::Completed()}) {
    engine.On(e, [names, e] { names->push_back(e.name()); });
  }
  return {};
}

TEST(DataSource, UnknownLengthIsFixedWhenTheDataFirstRunsOut) {
  Counter data(3, /*restartable=*/true);
  Engine engine(Identity);
  std::vector<std::string> names;
  NamesOf(engine, &names);
  ASSERT_TRUE(engine.Run(data, {.max_epochs = 2}).ok());
  EXPECT_EQ(engine.state().epoch_length, 3);
  EXPECT_EQ(engine.state().iteration, 6);
  // Epoch 1 ends with the extra GET_BATCH_STARTED that found the end; epoch 2 restarts.
  EXPECT_THAT(names, ElementsAre("EPOCH_STARTED", "GET_BATCH_STARTED", "ITERATION_COMPLETED",
                                 "GET_BATCH_STARTED", "ITERATION_COMPLETED", "GET_BATCH_STARTED",
                                 "ITERATION_COMPLETED", "GET_BATCH_STARTED", "EPOCH_COMPLETED",
                                 "EPOCH_STARTED", "GET_BATCH_STARTED",
                                 "DATALOADER_STOP_ITERATION", "ITERATION_COMPLETED",
                                 "GET_BATCH_STARTED", "ITERATION_COMPLETED", "GET_BATCH_STARTED",
                                 "ITERATION_COMPLETED", "EPOCH_COMPLETED", "COMPLETED"));
}

TEST(DataSource, OneShotStreamRunsZeroIterationsAfterwardsAndWarns) {
  Counter data(2, /*restartable=*/false);
  Engine engine(Identity);
  std::vector<std::string> warnings;
  engine.set_warning_handler([&](const std::string& w) { warnings.push_back(w); });
  std::vector<std::string> names;
  NamesOf(engine, &names);
  ASSERT_TRUE(engine.Run(data, {.max_epochs = 3}).ok());
  EXPECT_EQ(engine.state().iteration, 2);
  EXPECT_EQ(engine.state().epoch, 3);
  EXPECT_THAT(names, ElementsAre("EPOCH_STARTED", "GET_BATCH_STARTED", "ITERATION_COMPLETED",
                                 "GET_BATCH_STARTED", "ITERATION_COMPLETED", "GET_BATCH_STARTED",
                                 "EPOCH_COMPLETED", "EPOCH_STARTED", "GET_BATCH_STARTED",
                                 "DATALOADER_STOP_ITERATION", "EPOCH_COMPLETED", "EPOCH_STARTED",
                                 "GET_BATCH_STARTED", "DATALOADER_STOP_ITERATION",
                                 "EPOCH_COMPLETED", "COMPLETED"));
  // As in ignite, the warning is given while the run is not done (epoch 2 of 3), not in the
  // last epoch (epoch >= max_epochs counts as done).
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("Current iteration: 2 vs Total iterations to run : 6"));
}

TEST(DataSource, EmptyStreamIsAnError) {
  Counter data(0, /*restartable=*/true);
  Engine engine(Identity);
  absl::Status status = engine.Run(data);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("Input data has zero size"));
}

TEST(Run, WithoutDataFiresNoBatchEvents) {
  int steps = 0;
  Engine engine([&](Engine&) { ++steps; });
  std::vector<std::string> names;
  NamesOf(engine, &names);
  ASSERT_TRUE(engine.Run(RunOptions{.max_epochs = 2, .epoch_length = 2}).ok());
  EXPECT_EQ(steps, 4);
  EXPECT_THAT(names, ElementsAre("EPOCH_STARTED", "ITERATION_COMPLETED", "ITERATION_COMPLETED",
                                 "EPOCH_COMPLETED", "EPOCH_STARTED", "ITERATION_COMPLETED",
                                 "ITERATION_COMPLETED", "EPOCH_COMPLETED", "COMPLETED"));
  EXPECT_FALSE(engine.state().output.has_value());  // a void step leaves no output
}

TEST(Run, MaxItersStopsMidEpochThroughTerminate) {
  std::vector<int> data = {0, 1, 2, 3};
  Engine engine(Identity);
  std::vector<std::string> names;
  engine.On(Events::Terminate() | Events::EpochCompleted() | Events::Completed(),
            [&](Engine& e) { names.push_back(e.last_event()->name()); });
  ASSERT_TRUE(engine.Run(data, {.max_iters = 6}).ok());
  EXPECT_EQ(engine.state().iteration, 6);
  EXPECT_EQ(engine.state().max_epochs, 2);
  EXPECT_THAT(names, ElementsAre("EPOCH_COMPLETED", "TERMINATE", "COMPLETED"));
  EXPECT_EQ(engine.GetStateDict().GetIf<int64_t>("max_iters") != nullptr, true);

  Engine both(Identity);
  absl::Status status = both.Run(data, {.max_epochs = 2, .max_iters = 3});
  EXPECT_THAT(std::string(status.message()), HasSubstr("mutually exclusive"));
}

TEST(Run, InvalidArgumentsNameTheValue) {
  std::vector<int> data = {0, 1};
  Engine engine(Identity);
  EXPECT_THAT(std::string(engine.Run(data, {.max_epochs = 0}).message()),
              HasSubstr("max_epochs must be >= 1, got 0"));
  EXPECT_THAT(std::string(engine.Run(data, {.epoch_length = -2}).message()),
              HasSubstr("epoch_length must be >= 1, got -2"));
  EXPECT_THAT(std::string(engine.Run(data, {.max_iters = 0}).message()),
              HasSubstr("max_iters must be >= 1, got 0"));
}

TEST(Run, BatchTypeMismatchIsReportedBeforeAnythingRuns) {
  std::vector<double> data = {1.0};
  Engine engine(Identity);
  int started = 0;
  engine.On(Events::Started(), [&] { ++started; });
  absl::Status status = engine.Run(data);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("but the step takes"));
  EXPECT_EQ(started, 0);
  EXPECT_THAT(std::string(engine.Run(RunOptions{.epoch_length = 1}).message()),
              HasSubstr("Run() without data needs a step that takes only (Engine&)"));
}

TEST(Run, StepReturningStatusOrStoresTheValueAndFailsOnError) {
  std::vector<int> data = {1, 2, 3};
  Engine engine([](Engine& e, const int& b) -> absl::StatusOr<double> {
    if (b == 3) return absl::DataLossError("batch 3 is corrupt");
    return b * 0.5;
  });
  std::vector<double> outputs;
  engine.On(Events::IterationCompleted(),
            [&](Engine& e) { outputs.push_back(*e.state().output_as<double>()); });
  absl::Status status = engine.Run(data);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()), HasSubstr("batch 3 is corrupt"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("epoch 1, iteration 3"));
  EXPECT_THAT(outputs, ElementsAre(0.5, 1.0));
}

TEST(Run, HandlerReturningAnErrorFailsTheRunAndNamesTheEvent) {
  std::vector<int> data = {1, 2, 3};
  Engine engine(Identity);
  engine.On(Events::EpochCompleted(), [] { return absl::ResourceExhaustedError("disk full"); });
  int completed = 0;
  engine.On(Events::Completed(), [&] { ++completed; });
  absl::Status status = engine.Run(data, {.max_epochs = 2});
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(status.message()), HasSubstr("disk full [at EPOCH_COMPLETED, epoch 1"));
  EXPECT_EQ(completed, 0);
  EXPECT_EQ(engine.state().iteration, 3);
}

TEST(Run, RunFromItsOwnHandlerIsRejected) {
  std::vector<int> data = {1};
  Engine engine(Identity);
  absl::Status inner;
  engine.On(Events::Started(), [&](Engine& e) { inner = e.Run(data); });
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_EQ(inner.code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Run, AnotherEngineTerminatesTheTrainerFromItsHandler) {
  // ignite's EarlyStopping pattern: an evaluator run at the trainer's EPOCH_COMPLETED stops the
  // trainer: EPOCH_COMPLETED, TERMINATE, COMPLETED in that epoch.
  std::vector<int> train = {1, 2, 3, 4}, val = {1, 2, 3};
  Engine trainer(Identity);
  Engine evaluator(Identity);
  std::vector<std::string> names;
  trainer.On(Events::EpochCompleted(), [&] { ASSERT_TRUE(evaluator.Run(val).ok()); });
  evaluator.On(Events::Completed(), [&] {
    if (trainer.state().epoch == 3) trainer.Terminate();
  });
  trainer.On(Events::EpochCompleted() | Events::Terminate() | Events::Completed(),
             [&](Engine& e) { names.push_back(e.last_event()->name()); });
  ASSERT_TRUE(trainer.Run(train, {.max_epochs = 6}).ok());
  EXPECT_EQ(trainer.state().epoch, 3);
  EXPECT_THAT(names, ElementsAre("EPOCH_COMPLETED", "EPOCH_COMPLETED", "EPOCH_COMPLETED",
                                 "TERMINATE", "COMPLETED"));
}

TEST(Run, TerminateSkipCompleted) {
  std::vector<int> data = {1, 2};
  Engine engine(Identity);
  int completed = 0;
  engine.On(Events::IterationCompleted().Once(1), [](Engine& e) { e.Terminate(true); });
  engine.On(Events::Completed(), [&] { ++completed; });
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_EQ(completed, 0);
  EXPECT_TRUE(engine.should_terminate());
}

TEST(Handlers, OwnedHandlerObjectsAndStatusOrFactories) {
  struct CountingHandler {
    int* count;
    std::unique_ptr<int> move_only = std::make_unique<int>(0);
    void operator()(Engine&) { ++*count; }
  };
  int count = 0;
  std::vector<int> data = {1, 2};
  Engine engine(Identity);
  engine.On(Events::IterationCompleted(), CountingHandler{&count});  // move-only rvalue: owned
  CountingHandler referenced{&count};
  engine.On(Events::IterationCompleted(), referenced);  // non-copyable lvalue: referenced
  absl::StatusOr<std::unique_ptr<CountingHandler>> made =
      std::make_unique<CountingHandler>(CountingHandler{&count});
  ASSERT_TRUE(engine.AddEventHandler(Events::IterationCompleted(), std::move(made)).ok());
  absl::StatusOr<std::unique_ptr<CountingHandler>> failed =
      absl::InvalidArgumentError("patience must be >= 1, got 0");
  engine.On(Events::Completed(), std::move(failed));
  absl::Status status = engine.Run(data);
  EXPECT_THAT(std::string(status.message()), HasSubstr("patience must be >= 1, got 0"));
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_EQ(count, 6);
}

TEST(State, TimesAreSetPerEpochAndRun) {
  std::vector<int> data = {1, 2};
  Engine engine(Identity);
  std::optional<double> epoch_time_at_start;
  engine.On(Events::Started(), [&](Engine& e) { epoch_time_at_start = e.state().epoch_time; });
  ASSERT_TRUE(engine.Run(data, {.max_epochs = 2}).ok());
  EXPECT_EQ(epoch_time_at_start, 0.0);
  ASSERT_TRUE(engine.state().epoch_time.has_value());
  ASSERT_TRUE(engine.state().run_time.has_value());
  EXPECT_GE(*engine.state().run_time, *engine.state().epoch_time);
}

TEST(StateDictTest, RoundTripResumesWhereItStopped) {
  std::vector<int> data = {0, 1, 2, 3};
  Engine first(Identity);
  first.On(Events::IterationCompleted().Once(6), [](Engine& e) { e.Terminate(); });
  ASSERT_TRUE(first.Run(data, {.max_epochs = 3}).ok());
  StateDict saved = first.GetStateDict();

  Engine resumed(Identity);
  ASSERT_TRUE(resumed.LoadStateDict(saved).ok());
  EXPECT_EQ(resumed.state().epoch, 1);  // 6 // 4
  ASSERT_TRUE(resumed.Run(data).ok());
  EXPECT_EQ(resumed.state().iteration, 12);
  EXPECT_EQ(resumed.state().epoch, 3);

  EXPECT_THAT(std::string(resumed.LoadStateDict({{"iteration", std::string("x")},
                                                 {"max_epochs", int64_t{2}},
                                                 {"epoch_length", int64_t{4}}})
                              .message()),
              HasSubstr("'iteration' must be a non-negative integer"));
}

}  // namespace
}  // namespace ember
