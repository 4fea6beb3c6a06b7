// Replays every engine_* scenario of tests/conformance/golden-public.jsonl (recorded on
// pytorch-ignite v0.5.3): the event trace, the final state and the error, as ignite produced
// them. Where Ember differs on purpose (DESIGN.md), the test says so and why.
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/conformance/golden.h"

namespace ember {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;

using testing::Golden;

std::vector<int> Ints(const json& j) { return j.get<std::vector<int>>(); }

// Records [EVENT, epoch, iteration] for every event but EXCEPTION_RAISED (a handler on it
// would change the run: it swallows exceptions).
class Trace {
 public:
  void Attach(Engine& engine, std::vector<Event> events = {}) {
    if (events.empty()) {
      events = {Events::Started(),          Events::EpochStarted(),
                Events::GetBatchStarted(),  Events::GetBatchCompleted(),
                Events::DataloaderStopIteration(), Events::IterationStarted(),
                Events::IterationCompleted(), Events::EpochCompleted(),
                Events::Completed(),        Events::Terminate(),
                Events::TerminateSingleEpoch()};
    }
    for (Event event : events) {
      engine.On(event, [this, event](Engine& e) {
        entries.push_back(json::array({event.name(), e.state().epoch, e.state().iteration}));
      });
    }
  }
  json entries = json::array();
};

json StateJson(const Engine& engine) {
  const State& s = engine.state();
  json out;
  out["epoch"] = s.epoch;
  out["iteration"] = s.iteration;
  out["max_epochs"] = s.max_epochs ? json(*s.max_epochs) : json(nullptr);
  out["epoch_length"] = s.epoch_length ? json(*s.epoch_length) : json(nullptr);
  const int* output = s.output_as<int>();
  out["output"] = output ? json(*output) : json(nullptr);
  return out;
}

int ReturnBatch(Engine&, const int& batch) { return batch; }

TEST(EngineConformance, EventOrderBasic) {
  json g = Golden("engine_event_order_basic");
  std::vector<int> data = Ints(g["inputs"]["data"]);
  Engine engine(ReturnBatch);
  Trace trace;
  trace.Attach(engine);
  ASSERT_TRUE(engine.Run(data, {.max_epochs = g["inputs"]["max_epochs"].get<int>()}).ok());
  EXPECT_EQ(trace.entries, g["expected"]["trace"]);
  EXPECT_EQ(StateJson(engine), g["expected"]["state"]);
}

TEST(EngineConformance, EpochLengthShorterThanDataCarriesBatchesOver) {
  json g = Golden("engine_event_order_epoch_length_shorter_than_data");
  std::vector<int> data = Ints(g["inputs"]["data"]);
  Engine engine(ReturnBatch);
  Trace trace;
  trace.Attach(engine);
  json batches = json::array();
  engine.On(Events::IterationStarted(),
            [&](Engine& e) { batches.push_back(*e.state().batch_as<int>()); });
  ASSERT_TRUE(engine
                  .Run(data, {.max_epochs = g["inputs"]["max_epochs"].get<int>(),
                              .epoch_length = g["inputs"]["epoch_length"].get<int>()})
                  .ok());
  EXPECT_EQ(trace.entries, g["expected"]["trace"]);
  EXPECT_EQ(batches, g["expected"]["batches"]);
  EXPECT_EQ(StateJson(engine), g["expected"]["state"]);
}

// terminate() from a handler registered after the trace recorder.
void CheckTerminate(const std::string& scenario, EventSpec terminate_on) {
  SCOPED_TRACE(scenario);
  json g = Golden(scenario);
  std::vector<int> data = Ints(g["inputs"]["data"]);
  Engine engine(ReturnBatch);
  Trace trace;
  trace.Attach(engine);
  engine.On(terminate_on, [](Engine& e) { e.Terminate(); });
  absl::Status status = engine.Run(data, {.max_epochs = g["inputs"]["max_epochs"].get<int>()});
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(trace.entries, g["expected"]["trace"]);
  EXPECT_EQ(StateJson(engine), g["expected"]["state"]);
}

TEST(EngineConformance, TerminateMidEpochSkipsEpochCompleted) {
  CheckTerminate("engine_terminate_mid_epoch", Events::IterationCompleted().Once(6));
}

TEST(EngineConformance, TerminateAtEpochCompleted) {
  CheckTerminate("engine_terminate_at_epoch_completed", Events::EpochCompleted().Once(2));
}

TEST(EngineConformance, TerminateAtIterationStartedSkipsTheStep) {
  CheckTerminate("engine_terminate_at_iteration_started", Events::IterationStarted().Once(6));
}

TEST(EngineConformance, TerminateThenResumeStartsTheNextEpoch) {
  json g = Golden("engine_terminate_then_resume");
  std::vector<int> data = Ints(g["inputs"]["data"]);
  Engine engine(ReturnBatch);
  Trace trace;
  trace.Attach(engine, {Events::Started(), Events::EpochStarted(), Events::EpochCompleted(),
                        Events::Terminate(), Events::Completed()});
  json batches = json::array();
  engine.On(Events::IterationStarted(), [&](Engine& e) {
    batches.push_back(
        json::array({e.state().epoch, e.state().iteration, *e.state().batch_as<int>()}));
  });
  bool first_run = true;
  engine.On(Events::IterationCompleted().Once(6), [&](Engine& e) {
    if (first_run) e.Terminate();
  });
  ASSERT_TRUE(engine.Run(data, {.max_epochs = 3}).ok());
  EXPECT_EQ(StateJson(engine), g["expected"]["state_after_first_run"]);
  first_run = false;
  trace.entries.push_back(json::array({"--- second run(data, max_epochs=3) ---", nullptr, nullptr}));
  ASSERT_TRUE(engine.Run(data, {.max_epochs = 3}).ok());
  EXPECT_EQ(trace.entries, g["expected"]["trace"]);
  EXPECT_EQ(batches, g["expected"]["batches_epoch_iter_batch"]);
  EXPECT_EQ(StateJson(engine), g["expected"]["state_after_second_run"]);
}

void CheckTerminateEpoch(const std::string& scenario, bool skip_epoch_completed) {
  SCOPED_TRACE(scenario);
  json g = Golden(scenario);
  std::vector<int> data = Ints(g["inputs"]["data"]);
  Engine engine(ReturnBatch);
  Trace trace;
  trace.Attach(engine);
  engine.On(Events::IterationCompleted().Once(2),
            [&](Engine& e) { e.TerminateEpoch(skip_epoch_completed); });
  ASSERT_TRUE(engine.Run(data, {.max_epochs = g["inputs"]["max_epochs"].get<int>()}).ok());
  EXPECT_EQ(trace.entries, g["expected"]["trace"]);
  EXPECT_EQ(StateJson(engine), g["expected"]["state"]);
}

TEST(EngineConformance, TerminateEpochMidEpoch) {
  CheckTerminateEpoch("engine_terminate_epoch_mid_epoch", false);
}

TEST(EngineConformance, TerminateEpochSkipEpochCompleted) {
  CheckTerminateEpoch("engine_terminate_epoch_skip_epoch_completed", true);
}

TEST(EngineConformance, TerminateEpochOnEpochStartedIsAnError) {
  json g = Golden("engine_terminate_epoch_on_epoch_started_errors");
  std::vector<int> data = Ints(g["inputs"]["data"]);
  Engine engine(ReturnBatch);
  Trace trace;
  trace.Attach(engine);
  engine.On(Events::EpochStarted().Once(2), [](Engine& e) { e.TerminateEpoch(); });
  absl::Status status = engine.Run(data, {.max_epochs = 3});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("The method terminate_epoch() should not be called on Event.STARTED or "
                        "Event.EPOCH_STARTED"));
  EXPECT_EQ(trace.entries, g["expected"]["trace"]);
  EXPECT_EQ(StateJson(engine), g["expected"]["state"]);
}

int FailAtThree(Engine& e, const int& batch) {
  if (e.state().iteration == 3) throw std::invalid_argument("boom at 3");
  return batch;
}

TEST(EngineConformance, ExceptionWithoutHandlerEndsTheRun) {
  json g = Golden("engine_exception_no_handler");
  std::vector<int> data = Ints(g["inputs"]["data"]);
  Engine engine(FailAtThree);
  Trace trace;
  trace.Attach(engine);
  absl::Status status = engine.Run(data, {.max_epochs = 2});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()),
              HasSubstr(g["expected"]["raised"]["message"].get<std::string>()));
  // Ember names where it happened.
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("in the step function, epoch 1, iteration 3"));
  EXPECT_EQ(trace.entries, g["expected"]["trace"]);
  EXPECT_EQ(StateJson(engine), g["expected"]["state"]);
}

TEST(EngineConformance, SwallowingExceptionHandlerEndsOnlyTheEpoch) {
  json g = Golden("engine_exception_with_swallowing_handler");
  std::vector<int> data = Ints(g["inputs"]["data"]);
  Engine engine(FailAtThree);
  Trace trace;
  trace.Attach(engine);
  engine.On(Events::ExceptionRaised(), [&](Engine& e, std::exception_ptr error) {
    std::string message;
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& ex) {
      message = ex.what();
    }
    trace.entries.push_back(
        json::array({"EXCEPTION_RAISED", e.state().epoch, e.state().iteration, message}));
  });
  absl::Status status = engine.Run(data, {.max_epochs = 2});
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(trace.entries, g["expected"]["trace"]);
  EXPECT_EQ(StateJson(engine), g["expected"]["state"]);
}

// Ember differs (DESIGN.md): a rethrowing EXCEPTION_RAISED handler is called ONCE. ignite calls
// it twice (once from the epoch's catch, once from the run's; issue #1234), which double-counts
// anything the handler does (logging, alerting, saving an emergency checkpoint).
TEST(EngineConformance, RethrowingExceptionHandlerIsCalledOnce) {
  json g = Golden("engine_exception_with_reraising_handler");
  ASSERT_EQ(g["expected"]["handler_calls"].size(), 2u);  // what ignite does
  std::vector<int> data = {0, 1, 2, 3};
  Engine engine(FailAtThree);
  json calls = json::array();
  engine.On(Events::ExceptionRaised(), [&](Engine& e, std::exception_ptr error) {
    calls.push_back(json::array({e.state().epoch, e.state().iteration, "ValueError"}));
    std::rethrow_exception(error);
  });
  absl::Status status = engine.Run(data, {.max_epochs = 2});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()),
              HasSubstr(g["expected"]["raised"]["message"].get<std::string>()));
  EXPECT_EQ(calls, json::array({g["expected"]["handler_calls"][0]}));
}

class ResumeSemantics : public ::testing::Test {
 protected:
  void SetUp() override { golden_ = Golden("engine_run_resume_semantics")["expected"]; }

  // Records [epoch, iteration, batch] at ITERATION_STARTED.
  void RecordIterations(Engine& engine) {
    engine.On(Events::IterationStarted(), [this](Engine& e) {
      iterations_.push_back(
          json::array({e.state().epoch, e.state().iteration, *e.state().batch_as<int>()}));
    });
  }

  json golden_;
  json iterations_ = json::array();
  std::vector<int> data_ = {0, 1, 2, 3};
};

TEST_F(ResumeSemantics, A_RerunOfADoneEngineStartsOneFreshEpoch) {
  Engine engine(ReturnBatch);
  ASSERT_TRUE(engine.Run(data_, {.max_epochs = 2}).ok());
  RecordIterations(engine);
  ASSERT_TRUE(engine.Run(data_).ok());
  EXPECT_EQ(StateJson(engine), golden_["a_rerun_done_engine_no_args"]["state"]);
  EXPECT_EQ(iterations_, golden_["a_rerun_done_engine_no_args"]["iterations_of_second_run"]);
}

TEST_F(ResumeSemantics, B_LargerMaxEpochsContinues) {
  Engine engine(ReturnBatch);
  ASSERT_TRUE(engine.Run(data_, {.max_epochs = 2}).ok());
  RecordIterations(engine);
  ASSERT_TRUE(engine.Run(data_, {.max_epochs = 4}).ok());
  EXPECT_EQ(StateJson(engine), golden_["b_extend_max_epochs"]["state"]);
  EXPECT_EQ(iterations_[0], golden_["b_extend_max_epochs"]["first_iter_of_second_run"]);
}

TEST_F(ResumeSemantics, C_LoadIterationResumesMidEpochWithoutSkippingData) {
  Engine engine(ReturnBatch);
  ASSERT_TRUE(
      engine.LoadStateDict({{"iteration", int64_t{5}}, {"max_epochs", int64_t{3}},
                            {"epoch_length", int64_t{4}}})
          .ok());
  EXPECT_EQ(StateJson(engine), golden_["c_load_iteration_5"]["after_load"]);
  RecordIterations(engine);
  ASSERT_TRUE(engine.Run(data_).ok());
  EXPECT_EQ(StateJson(engine), golden_["c_load_iteration_5"]["state"]);
  EXPECT_EQ(iterations_, golden_["c_load_iteration_5"]["iterations"]);
}

TEST_F(ResumeSemantics, D_LoadEpoch) {
  Engine engine(ReturnBatch);
  ASSERT_TRUE(engine
                  .LoadStateDict({{"epoch", int64_t{1}}, {"max_epochs", int64_t{3}},
                                  {"epoch_length", int64_t{4}}})
                  .ok());
  EXPECT_EQ(StateJson(engine), golden_["d_load_epoch_1"]["after_load"]);
  RecordIterations(engine);
  ASSERT_TRUE(engine.Run(data_).ok());
  EXPECT_EQ(StateJson(engine), golden_["d_load_epoch_1"]["state"]);
  EXPECT_EQ(iterations_[0], golden_["d_load_epoch_1"]["first_iteration"]);
  EXPECT_EQ(iterations_.size(), golden_["d_load_epoch_1"]["n_iterations"].get<size_t>());
}

TEST_F(ResumeSemantics, E_F_InvalidOverridesOfALoadedState) {
  Engine engine(ReturnBatch);
  ASSERT_TRUE(engine
                  .LoadStateDict({{"epoch", int64_t{2}}, {"max_epochs", int64_t{5}},
                                  {"epoch_length", int64_t{4}}})
                  .ok());
  absl::Status e = engine.Run(data_, {.max_epochs = 1});
  EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(e.message()),
              HasSubstr("Argument max_epochs should be greater than or equal to the start epoch "
                        "defined in the state: 1 vs 2."));
  absl::Status f = engine.Run(data_, {.epoch_length = 3});
  EXPECT_EQ(f.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(f.message()),
            golden_["f_epoch_length_mismatch"]["message"].get<std::string>());
}

TEST_F(ResumeSemantics, G_ResetMaxEpochsRestarts) {
  Engine engine(ReturnBatch);
  ASSERT_TRUE(engine.Run(data_, {.max_epochs = 2}).ok());
  engine.state().max_epochs.reset();
  ASSERT_TRUE(engine.Run(data_, {.max_epochs = 1}).ok());
  EXPECT_EQ(StateJson(engine), golden_["g_reset_max_epochs_none"]["state"]);
}

TEST_F(ResumeSemantics, H_StateDictWithUserKeys) {
  Engine engine(ReturnBatch);
  engine.set_state_dict_user_keys({"alpha"});
  engine.On(Events::Started(), [](Engine& e) { e.state().user.Set("alpha", 0.1); });
  ASSERT_TRUE(engine.Run(data_, {.max_epochs = 2}).ok());
  StateDict d = engine.GetStateDict();
  json out = json::object();
  for (const auto& [key, value] : d.items()) {
    if (const int64_t* i = std::get_if<int64_t>(&value)) out[key] = *i;
    if (const double* x = std::get_if<double>(&value)) out[key] = *x;
  }
  EXPECT_EQ(out, golden_["h_state_dict"]);
  std::vector<std::string> keys;
  for (const auto& item : d.items()) keys.push_back(item.first);
  EXPECT_EQ(keys, (std::vector<std::string>{"epoch_length", "max_epochs", "iteration", "alpha"}));
}

TEST_F(ResumeSemantics, I_J_EmptyDataAndNoDataWithoutEpochLength) {
  Engine engine(ReturnBatch);
  std::vector<int> empty;
  absl::Status i = engine.Run(empty, {.max_epochs = 1});
  EXPECT_EQ(std::string(i.message()), golden_["i_empty_data"]["message"].get<std::string>());
  Engine no_data([](Engine&) {});
  absl::Status j = no_data.Run(RunOptions{.max_epochs = 1});
  EXPECT_EQ(std::string(j.message()),
            golden_["j_none_data_no_epoch_length"]["message"].get<std::string>());
}

TEST(EngineConformance, LoadStateDictRules) {
  json g = Golden("ckpt_load_objects_rules")["expected"];
  Engine engine(ReturnBatch);
  absl::Status missing =
      engine.LoadStateDict({{"iteration", int64_t{3}}, {"max_epochs", int64_t{2}}});
  EXPECT_EQ(std::string(missing.message()),
            g["engine_missing_epoch_length"]["message"].get<std::string>());
  absl::Status both = engine.LoadStateDict({{"iteration", int64_t{3}},
                                            {"epoch", int64_t{1}},
                                            {"max_epochs", int64_t{2}},
                                            {"epoch_length", int64_t{4}}});
  EXPECT_EQ(std::string(both.message()),
            g["engine_both_iteration_and_epoch"]["message"].get<std::string>());
  absl::Status neither =
      engine.LoadStateDict({{"max_epochs", int64_t{2}}, {"epoch_length", int64_t{4}}});
  EXPECT_EQ(std::string(neither.message()),
            g["engine_neither_iteration_nor_epoch"]["message"].get<std::string>());
}

}  // namespace
}  // namespace ember
