// Event filters: ignite's table (ignite-behaviour.md §3, 5 batches x 3 epochs), argument
// validation with ignite's messages, custom events, event lists and handler removal.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

int Identity(Engine&, const int& b) { return b; }

// Runs 5 batches x 3 epochs and returns the counter values at which `spec` fired.
std::vector<int64_t> FiredAt(EventSpec spec) {
  std::vector<int> data = {0, 1, 2, 3, 4};
  Engine engine(Identity);
  std::vector<int64_t> fired;
  Event event = spec.event();
  absl::StatusOr<HandlerHandle> handle =
      engine.AddEventHandler(spec, [&](Engine& e) { fired.push_back(*e.EventAttributeValue(event)); });
  EXPECT_TRUE(handle.ok()) << handle.status();
  EXPECT_TRUE(engine.Run(data, {.max_epochs = 3}).ok());
  return fired;
}

TEST(EventFilter, Every) {
  EXPECT_THAT(FiredAt(Events::IterationCompleted().Every(2)),
              ElementsAre(2, 4, 6, 8, 10, 12, 14));
  EXPECT_EQ(FiredAt(Events::IterationCompleted().Every(1)).size(), 15u);
}

TEST(EventFilter, OnceIsAListOfValues) {
  EXPECT_THAT(FiredAt(Events::IterationCompleted().Once({2, 5, 11})), ElementsAre(2, 5, 11));
  EXPECT_THAT(FiredAt(Events::EpochCompleted().Once(2)), ElementsAre(2));
}

TEST(EventFilter, BeforeAndAfterAreExclusive) {
  EXPECT_THAT(FiredAt(Events::IterationCompleted().Before(5).After(2)), ElementsAre(3, 4));
  EXPECT_THAT(FiredAt(Events::IterationCompleted().After(12)), ElementsAre(13, 14, 15));
  EXPECT_THAT(FiredAt(Events::IterationCompleted().Before(3)), ElementsAre(1, 2));
}

TEST(EventFilter, EveryWithBeforeAfterCountsFromAfterPlusOne) {
  EXPECT_THAT(FiredAt(Events::IterationCompleted().Every(3).After(2).Before(12)),
              ElementsAre(3, 6, 9));
  EXPECT_THAT(FiredAt(Events::EpochStarted().Every(2)), ElementsAre(2));
  EXPECT_THAT(FiredAt(Events::EpochStarted().Every(2).After(0)), ElementsAre(1, 3));
}

TEST(EventFilter, GetBatchStartedSeesThePreviousIteration) {
  EXPECT_THAT(FiredAt(Events::GetBatchStarted().Every(5)), ElementsAre(0, 5, 10));
}

TEST(EventFilter, StartedAndCompletedSeeTheEpoch) {
  EXPECT_THAT(FiredAt(Events::Started().Every(2)), ElementsAre(0));
  EXPECT_THAT(FiredAt(Events::Completed().Every(2)), IsEmpty());
}

TEST(EventFilter, CustomPredicate) {
  EXPECT_THAT(FiredAt(Events::EpochCompleted().When(
                  [](const Engine& e, int64_t epoch) { return epoch != 2; })),
              ElementsAre(1, 3));
}

TEST(EventFilter, ValidationFollowsIgnite) {
  auto error = [](FilterArgs args) {
    absl::StatusOr<EventFilter> f = EventFilter::Create(std::move(args));
    EXPECT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(f.status().message());
  };
  EXPECT_THAT(error({.every = 0}),
              HasSubstr("Argument every should be integer and greater than zero, got 0"));
  EXPECT_THAT(error({.once = std::vector<int64_t>{0}}),
              HasSubstr("Argument once should either be a positive integer or a list of "
                        "positive integers, got 0"));
  EXPECT_THAT(error({.once = std::vector<int64_t>{1, -2}}), HasSubstr("got [1, -2]"));
  EXPECT_THAT(error({.once = std::vector<int64_t>{}}), HasSubstr("got []"));
  EXPECT_THAT(error({.every = 2, .once = std::vector<int64_t>{3}}),
              HasSubstr("Only one of the input arguments should be specified, except before, "
                        "after and every"));
  EXPECT_THAT(error({}), HasSubstr("Only one of the input arguments should be specified"));
  EXPECT_THAT(error({.before = -1}),
              HasSubstr("Argument before should be integer and greater or equal to zero, got -1"));
  EXPECT_THAT(error({.after = -3}),
              HasSubstr("Argument after should be integer and greater or equal to zero, got -3"));
  EXPECT_THAT(error({.once = std::vector<int64_t>{2},
                     .predicate = [](const Engine&, int64_t) { return true; }}),
              HasSubstr("Only one of the input arguments"));
}

TEST(EventFilter, InvalidRegistrationNamesTheSpecAndRegistersNothing) {
  std::vector<int> data = {1, 2};
  Engine engine(Identity);
  int calls = 0;
  absl::StatusOr<HandlerHandle> h = engine.AddEventHandler(
      Events::EpochCompleted() | Events::IterationCompleted().Every(0), [&] { ++calls; });
  ASSERT_FALSE(h.ok());
  EXPECT_THAT(std::string(h.status().message()),
              HasSubstr("ITERATION_COMPLETED(every=0): Argument every should be integer"));
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_EQ(calls, 0);  // not even on the valid EPOCH_COMPLETED
}

TEST(EventFilter, OnDefersTheErrorToRun) {
  std::vector<int> data = {1, 2};
  Engine engine(Identity);
  int calls = 0;
  engine.On(Events::IterationCompleted().Once(std::vector<int64_t>{}), [&] { ++calls; });
  absl::Status status = engine.Run(data);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("a handler registration failed"));
  EXPECT_EQ(engine.state().iteration, 0);  // nothing ran
  EXPECT_TRUE(engine.Run(data).ok());      // the error is reported once
  EXPECT_EQ(calls, 0);
}

TEST(EventFilter, EventsWithoutCounterCannotBeFiltered) {
  Engine engine(Identity);
  absl::StatusOr<HandlerHandle> h =
      engine.AddEventHandler(Events::Terminate().Every(2), [] {});
  ASSERT_FALSE(h.ok());
  EXPECT_THAT(std::string(h.status().message()), HasSubstr("TERMINATE has no iteration or epoch"));
  EXPECT_FALSE(engine.EventAttributeValue(Events::ExceptionRaised()).ok());
}

TEST(EventList, RegistersOnEachEventAndRemovesFromAll) {
  std::vector<int> data = {1, 2, 3};
  Engine engine(Identity);
  std::vector<std::string> fired;
  absl::StatusOr<HandlerHandle> handle = engine.AddEventHandler(
      Events::Started() | Events::IterationCompleted().Every(2) | Events::Completed(),
      [&](Engine& e) { fired.push_back(e.last_event()->name()); });
  ASSERT_TRUE(handle.ok());
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_THAT(fired, ElementsAre("STARTED", "ITERATION_COMPLETED", "COMPLETED"));
  EXPECT_TRUE(handle->registered());
  EXPECT_TRUE(handle->Remove());
  EXPECT_FALSE(handle->Remove());
  fired.clear();
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_THAT(fired, IsEmpty());
}

TEST(Handlers, RunInRegistrationOrderAndMayRemoveThemselvesWhileFiring) {
  std::vector<int> data = {1, 2, 3};
  Engine engine(Identity);
  std::vector<std::string> calls;
  HandlerHandle self;
  engine.On(Events::IterationCompleted(), [&] { calls.push_back("a"); });
  self = engine.On(Events::IterationCompleted(), [&] {
    calls.push_back("b");
    self.Remove();
  });
  engine.On(Events::IterationCompleted(), [&] { calls.push_back("c"); });
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_THAT(calls, ElementsAre("a", "b", "c", "a", "c", "a", "c"));
}

TEST(Handlers, HandleOutlivingTheEngineIsHarmless) {
  HandlerHandle handle;
  {
    Engine engine(Identity);
    handle = engine.On(Events::Started(), [] {});
    EXPECT_TRUE(handle.registered());
  }
  EXPECT_FALSE(handle.registered());
  EXPECT_FALSE(handle.Remove());
}

TEST(CustomEvents, MustBeRegisteredThenFireWithTheirAttribute) {
  Event backward = Event::Custom("BACKWARD_COMPLETED", EventAttr::kIteration);
  EXPECT_EQ(Event::Custom("BACKWARD_COMPLETED"), backward);
  EXPECT_EQ(backward.name(), "BACKWARD_COMPLETED");
  EXPECT_FALSE(backward.is_builtin());

  std::vector<int> data = {1, 2, 3, 4};
  Engine engine([&](Engine& e, const int& b) {
    EXPECT_TRUE(e.FireEvent(backward).ok());
    return b;
  });
  absl::StatusOr<HandlerHandle> early = engine.AddEventHandler(backward, [] {});
  ASSERT_FALSE(early.ok());
  EXPECT_THAT(std::string(early.status().message()),
              HasSubstr("Event BACKWARD_COMPLETED is not a valid event for this Engine"));

  engine.RegisterEvents({backward});
  std::vector<int64_t> fired;
  ASSERT_TRUE(engine
                  .AddEventHandler(backward.Every(2),
                                   [&](Engine& e) { fired.push_back(e.state().iteration); })
                  .ok());
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_THAT(fired, ElementsAre(2, 4));

  Engine other(Identity);
  EXPECT_EQ(other.FireEvent(backward).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ember
