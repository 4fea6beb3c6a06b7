// EarlyStopping, TerminateOnNan and Timer against the es_*, ton_* and timer_* scenarios
// recorded on ignite v0.5.3, plus Ember's options and deliberate differences.
#include <any>
#include <cmath>
#include <complex>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "handlers/early_stopping.h"
#include "handlers/terminate_on_nan.h"
#include "handlers/timer.h"
#include "handlers/serialization/value.h"
#include "nlohmann/json.hpp"
#include "tests/conformance/golden.h"

namespace ember {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

using testing::Golden;

double Num(const json& j) {
  if (j.is_string()) {
    const std::string s = j;
    if (s == "nan") return kNaN;
    if (s == "inf") return kInf;
    if (s == "-inf") return -kInf;
  }
  return j.get<double>();
}

json NumJson(double v) { return std::isnan(v) ? json("nan") : json(v); }

int Identity(Engine&, const int& b) { return b; }

// Wraps EarlyStopping to record [epoch, score, best, counter] after each decision.
class RecordingEs : public SynchronizedHandler {
 public:
  RecordingEs(EarlyStopping* es, Engine* trainer, json* calls) : es_(es), trainer_(trainer), calls_(calls) {}
  size_t num_values() const override { return es_->num_values(); }
  dist::Reduction reduction(size_t i) const override { return es_->reduction(i); }
  absl::Status Propose(Engine& e, absl::Span<double> v) override { return es_->Propose(e, v); }
  absl::Status Decide(Engine& e, const Agreement& a) override {
    absl::Status s = es_->Decide(e, a);
    calls_->push_back(json::array({trainer_->state().epoch, NumJson(*es_->last_score()),
                                   es_->best_score() ? NumJson(*es_->best_score()) : json(nullptr),
                                   es_->counter()}));
    return s;
  }

 private:
  EarlyStopping* es_;
  Engine* trainer_;
  json* calls_;
};

struct EsRun {
  json calls = json::array();
  bool stopped = false;
  int64_t epoch = 0, iteration = 0;
  json state_dict;
};

EsRun RunEs(const json& inputs, EarlyStoppingOptions options) {
  std::vector<double> scores;
  for (const json& s : inputs["scores"]) scores.push_back(Num(s));
  std::vector<int> data(inputs["trainer"]["data_len"].get<int>(), 0);
  Engine trainer(Identity);
  options.patience = inputs["patience"];
  options.min_delta = inputs["min_delta"];
  options.cumulative_delta = inputs["cumulative_delta"];
  options.score_function = [&](const Engine& e) { return scores[e.state().epoch - 1]; };
  auto es = EarlyStopping::Create(options, trainer);
  EXPECT_TRUE(es.ok()) << es.status();
  EsRun run;
  RecordingEs recorder(es->get(), &trainer, &run.calls);
  trainer.On(Events::EpochCompleted(), recorder);
  EXPECT_TRUE(trainer.Run(data, {.max_epochs = inputs["trainer"]["max_epochs"].get<int>()}).ok());
  run.stopped = (*es)->stop_reason() != EarlyStopping::StopReason::kNone;
  run.epoch = trainer.state().epoch;
  run.iteration = trainer.state().iteration;
  Value sd = (*es)->StateDict();
  run.state_dict = {{"counter", sd.Find("counter")->as_int()},
                    {"best_score", NumJson(sd.Find("best_score")->as_double())}};
  return run;
}

void CheckEsScenario(const std::string& name) {
  SCOPED_TRACE(name);
  json g = Golden(name);
  EsRun run = RunEs(g["inputs"], {});
  EXPECT_EQ(run.calls, g["expected"]["calls_epoch_score_best_counter"]);
  EXPECT_EQ(run.stopped, g["expected"]["stopped"].get<bool>());
  EXPECT_EQ(run.epoch, g["expected"]["final_state"]["epoch"].get<int64_t>());
  EXPECT_EQ(run.iteration, g["expected"]["final_state"]["iteration"].get<int64_t>());
  EXPECT_EQ(run.state_dict, g["expected"]["state_dict"]);
}

TEST(EarlyStoppingConformance, PatienceRecovers) { CheckEsScenario("es_patience_recovers"); }
TEST(EarlyStoppingConformance, MinDeltaCumulative) { CheckEsScenario("es_min_delta_cumulative"); }

// Ember differs (DESIGN.md): a NaN score is never an improvement. ignite makes NaN the best score
// and treats the next finite score as an improvement again, so a run that produces NaN scores
// keeps training (here it stops at epoch 5 instead of 3) and its "best" is NaN in between.
TEST(EarlyStoppingConformance, NanScoreCountsTowardPatience) {
  json g = Golden("es_nan_scores");
  ASSERT_EQ(g["expected"]["calls_epoch_score_best_counter"][1], json::array({2, "nan", "nan", 0}));
  EsRun run = RunEs(g["inputs"], {});
  EXPECT_EQ(run.calls, json::parse(R"([[1, 0.5, 0.5, 0], [2, "nan", 0.5, 1], [3, 0.4, 0.5, 2]])"));
  EXPECT_TRUE(run.stopped);
  EXPECT_EQ(run.epoch, 3);
}

TEST(EarlyStoppingConformance, StateDictResumeStopsAtTheSameEpoch) {
  json g = Golden("es_state_dict_resume");
  std::vector<double> scores;
  for (const json& s : g["inputs"]["scores"]) scores.push_back(s.get<double>());
  std::vector<int> data = {0, 1};
  auto score = [&](const Engine& e) { return scores[e.state().epoch - 1]; };
  // Interrupted after 4 epochs.
  Engine trainer(Identity);
  auto es = EarlyStopping::Create({.patience = 3, .score_function = score}, trainer);
  ASSERT_TRUE(es.ok());
  trainer.On(Events::EpochCompleted(), **es);
  ASSERT_TRUE(trainer.Run(data, {.max_epochs = 4}).ok());
  Value sd = (*es)->StateDict();
  EXPECT_EQ(sd.Find("counter")->as_int(), g["expected"]["state_dict_after_4_epochs"]["counter"].get<int>());
  EXPECT_EQ(sd.Find("best_score")->as_double(), g["expected"]["state_dict_after_4_epochs"]["best_score"].get<double>());
  // Resumed in a new trainer and handler.
  Engine trainer2(Identity);
  ASSERT_TRUE(trainer2.LoadStateDict(trainer.GetStateDict()).ok());
  auto es2 = EarlyStopping::Create({.patience = 3, .score_function = score}, trainer2);
  ASSERT_TRUE((*es2)->LoadStateDict(sd).ok());
  trainer2.On(Events::EpochCompleted(), **es2);
  ASSERT_TRUE(trainer2.Run(data, {.max_epochs = 7}).ok());
  EXPECT_EQ(trainer2.state().epoch, g["expected"]["resumed_final_state"]["epoch"].get<int>());
  EXPECT_EQ((*es2)->counter(), g["expected"]["resumed_es_state_dict"]["counter"].get<int>());
  // Validation, with ignite's messages.
  json errors = g["expected"]["validation_errors"];
  EXPECT_THAT(std::string(EarlyStopping::Create({.patience = 0, .score_function = score}, trainer).status().message()),
              HasSubstr(errors["patience_0"]["message"].get<std::string>()));
  EXPECT_THAT(std::string(EarlyStopping::Create({.score_function = score, .min_delta = -1}, trainer).status().message()),
              HasSubstr(errors["min_delta_negative"]["message"].get<std::string>()));
  Value partial = Value::Dict();
  partial.Set("counter", 1);
  EXPECT_EQ(std::string((*es2)->LoadStateDict(partial).message()),
            errors["load_state_dict_missing_best_score"]["message"].get<std::string>());
}

TEST(EarlyStoppingConformance, OnEvaluatorStopsTrainer) {
  json g = Golden("es_on_evaluator_stops_trainer");
  std::vector<double> acc;
  for (const json& a : g["inputs"]["evaluator_acc_by_trainer_epoch"]) acc.push_back(a.get<double>());
  std::vector<int> train(4, 0), val(3, 0);
  Engine trainer(Identity);
  Engine evaluator(Identity);
  json trace = json::array();
  for (Event e : {Events::EpochCompleted(), Events::Terminate(), Events::Completed()}) {
    trainer.On(e, [&, e](Engine& t) { trace.push_back(json::array({e.name(), t.state().epoch, t.state().iteration})); });
  }
  trainer.On(Events::EpochCompleted(), [&] { ASSERT_TRUE(evaluator.Run(val).ok()); });
  evaluator.On(Events::Completed(),
               [&](Engine& e) { e.state().metrics["acc"] = acc[trainer.state().epoch - 1]; });
  auto es = EarlyStopping::Create({.patience = 3, .score_name = "acc"}, trainer);
  ASSERT_TRUE(es.ok());
  EarlyStopping* handle = es->get();
  evaluator.On(Events::Completed(), *std::move(es));  // the engine owns it
  ASSERT_TRUE(trainer.Run(train, {.max_epochs = 6}).ok());
  EXPECT_EQ(trace, g["expected"]["trainer_trace"]);
  EXPECT_EQ(handle->counter(), g["expected"]["es_state_dict"]["counter"].get<int>());
  EXPECT_EQ(*handle->best_score(), g["expected"]["es_state_dict"]["best_score"].get<double>());
}

TEST(EarlyStoppingOptions, ModeMinRelativeThresholdsAndFiniteCheck) {
  std::vector<int> data = {0};
  auto run = [&](EarlyStoppingOptions o, std::vector<double> scores) {
    Engine trainer(Identity);
    o.score_function = [&](const Engine& e) { return scores[e.state().epoch - 1]; };
    auto es = EarlyStopping::Create(o, trainer);
    EXPECT_TRUE(es.ok()) << es.status();
    trainer.On(Events::EpochCompleted(), **es);
    EXPECT_TRUE(trainer.Run(data, {.max_epochs = static_cast<int64_t>(scores.size())}).ok());
    return std::pair{trainer.state().epoch, (*es)->stop_reason()};
  };
  using M = EarlyStoppingOptions::Mode;
  using R = EarlyStopping::StopReason;
  // Loss going down: min mode never stops.
  EXPECT_EQ(run({.patience = 2, .mode = M::kMin}, {1.0, 0.9, 0.8, 0.7}).first, 4);
  // Relative threshold of 10%: 1.0 -> 0.95 is not enough in min mode.
  EXPECT_EQ(run({.patience = 2, .min_delta = 0.1, .mode = M::kMin,
                 .threshold_mode = EarlyStoppingOptions::ThresholdMode::kRel},
                {1.0, 0.95, 0.93, 0.5}),
            std::pair(int64_t{3}, R::kPatience));
  EXPECT_EQ(run({.patience = 9, .stopping_threshold = 0.9}, {0.5, 0.95, 0.99}),
            std::pair(int64_t{2}, R::kStoppingThreshold));
  EXPECT_EQ(run({.patience = 9, .divergence_threshold = 0.1}, {0.5, 0.05, 0.99}),
            std::pair(int64_t{2}, R::kDivergence));
  EXPECT_EQ(run({.patience = 9, .check_finite = true}, {0.5, kInf, 0.99}),
            std::pair(int64_t{2}, R::kNonFinite));
  Engine t(Identity);
  EXPECT_THAT(std::string(EarlyStopping::Create({.patience = 1}, t).status().message()),
              HasSubstr("give a score_function or a score_name"));
}

// ---- TerminateOnNan -------------------------------------------------------------------

std::any CaseValue(const std::string& c) {
  if (c == "float finite") return 1.5;
  if (c == "float nan") return kNaN;
  if (c == "float inf") return kInf;
  if (c == "float -inf") return -kInf;
  if (c == "int") return int64_t{7};
  if (c == "bool") return true;
  if (c == "scalar tensor finite") return torch::tensor(0.25);
  if (c == "scalar tensor nan") return torch::tensor(kNaN);
  if (c == "tensor with one inf") return torch::tensor({1.0f, static_cast<float>(kInf), 2.0f});
  if (c == "tensor all finite") return torch::tensor({1.0, 2.0}, torch::kFloat64);
  if (c == "empty tensor") return torch::zeros({0});
  if (c == "int64 tensor") return torch::tensor({1, 2}, torch::kInt64);
  if (c == "list [1.0, nan]") return Value::List({1.0, kNaN});
  if (c == "tuple (finite tensor, 2.0)") return Value::Tuple({torch::ones({1}), 2.0});
  if (c == "dict {'loss': inf}") {
    Value d = Value::Dict();
    d.Set("loss", kInf);
    return d;
  }
  if (c == "dict nested {'a': {'b': [0.0, nan]}}") {
    Value b = Value::Dict();
    b.Set("b", Value::List({0.0, kNaN}));
    Value a = Value::Dict();
    a.Set("a", b);
    return a;
  }
  if (c == "dict with str value") {
    Value d = Value::Dict();
    d.Set("loss", 1.0);
    d.Set("tag", "nan");
    return d;
  }
  if (c == "str 'nan'") return std::string("nan");
  if (c == "complex(inf, 0)") return std::complex<double>(kInf, 0.0);
  if (c == "None") return std::any();
  return std::any();
}

TEST(TerminateOnNanConformance, OutputKinds) {
  json g = Golden("ton_output_kinds");
  for (const json& result : g["expected"]["results"]) {
    const std::string c = result["case"];
    SCOPED_TRACE(c);
    if (c.find("numpy") != std::string::npos) continue;  // no numpy arrays in C++
    const bool transform = c.find("output_transform") != std::string::npos;
    std::vector<int> data = {0, 1, 2};
    Engine engine([&](Engine&, const int& i) -> std::any {
      if (transform) {
        Value d = Value::Dict();
        const bool nan_in_loss = c.find("nan in 'loss'") != std::string::npos;
        d.Set("loss", i == 1 && nan_in_loss ? kNaN : 0.5);
        d.Set("aux", i == 1 && !nan_in_loss ? kNaN : 0.5);
        return d;
      }
      return i == 1 ? CaseValue(c) : std::any(i == 0 ? 0.5 : 0.25);
    });
    TerminateOnNan::OutputTransform pick = nullptr;
    if (transform) {
      pick = [](const std::any& o) -> std::any { return *std::any_cast<Value>(o).Find("loss"); };
    }
    engine.On(Events::IterationCompleted(), TerminateOnNan(pick));
    absl::Status status = engine.Run(data, {.max_epochs = 2});
    if (!result["raised"].is_null()) {
      // ignite raises TypeError for None; Ember fails the run with a message saying why.
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(status.message()), HasSubstr("the step returned no output"));
    } else {
      EXPECT_TRUE(status.ok()) << status;
      EXPECT_EQ(engine.should_terminate(), result["terminated"].get<bool>());
    }
    EXPECT_EQ(engine.state().iteration, result["final_iteration"].get<int64_t>());
  }
}

TEST(TerminateOnNan, ReportsWhereAndCheckRejectsUnknownTypes) {
  TerminateOnNan ton;
  std::vector<int> data = {0, 1, 2, 3};
  Engine engine([](Engine&, const int& i) { return i == 2 ? kNaN : 1.0; });
  engine.On(Events::IterationCompleted(), ton);
  ASSERT_TRUE(engine.Run(data).ok());
  EXPECT_EQ(ton.terminated_at(), 3);
  EXPECT_EQ(ton.bad_ranks(), std::vector<int>{0});
  struct Opaque {};
  EXPECT_THAT(std::string(TerminateOnNan::HasNonFinite(std::any(Opaque{})).status().message()),
              HasSubstr("cannot check an output of type"));
  EXPECT_TRUE(*TerminateOnNan::HasNonFinite(std::any(std::vector<float>{1, NAN})));
  EXPECT_FALSE(*TerminateOnNan::HasNonFinite(std::any(std::map<std::string, double>{{"a", 1}})));
}

// ---- Timer ----------------------------------------------------------------------------

TEST(TimerConformance, ManualOps) {
  json g = Golden("timer_manual_ops");
  FakeClock clock(g["inputs"]["clock_start"].get<double>());
  std::unique_ptr<Timer> timer;
  json values = json::array();
  for (const json& op : g["inputs"]["ops"]) {
    const std::string name = op[0];
    if (name == "new") timer = std::make_unique<Timer>(op[1]["average"].get<bool>(), &clock);
    if (name == "advance") clock.Advance(op[1].get<double>());
    if (name == "pause") timer->Pause();
    if (name == "resume") timer->Resume();
    if (name == "step") timer->Step();
    if (name == "reset") timer->Reset();
    if (name == "value") {
      values.push_back({{"value", timer->value()}, {"total", timer->total()},
                        {"step_count", timer->step_count()}, {"running", timer->running()}});
    }
  }
  EXPECT_EQ(values, g["expected"]["values"]);
}

TEST(Timer, EngineAttachFakeClock) {
  // ignite-behaviour.md §9: handlers cost 0.25 at EPOCH_STARTED, 1.0 per iteration, 0.5 after
  // each iteration and 4.0 at EPOCH_COMPLETED; 3 iterations x 2 epochs.
  FakeClock clock;
  std::vector<int> data = {0, 1, 2};
  Engine engine([&](Engine&, const int&) { clock.Advance(1.0); });
  Timer total(false, &clock), per_batch(true, &clock), last_epoch(false, &clock),
      train_only(false, &clock), no_step(true, &clock), unattached(false, &clock);
  ASSERT_TRUE(total.Attach(engine).ok());
  ASSERT_TRUE(per_batch.Attach(engine, {.start = Events::Started(), .pause = Events::IterationCompleted(),
                                        .resume = Events::IterationStarted(), .step = Events::IterationCompleted()}).ok());
  ASSERT_TRUE(last_epoch.Attach(engine, {.start = Events::EpochStarted(), .pause = Events::EpochCompleted()}).ok());
  // Training time without the EPOCH_COMPLETED handlers.
  ASSERT_TRUE(train_only.Attach(engine, {.start = Events::Started(), .pause = Events::EpochCompleted(),
                                         .resume = Events::EpochStarted()}).ok());
  ASSERT_TRUE(no_step.Attach(engine).ok());
  engine.On(Events::EpochStarted(), [&] { clock.Advance(0.25); });
  engine.On(Events::IterationCompleted(), [&] { clock.Advance(0.5); });
  engine.On(Events::EpochCompleted(), [&] { clock.Advance(4.0); });
  ASSERT_TRUE(engine.Run(data, {.max_epochs = 2}).ok());
  EXPECT_DOUBLE_EQ(total.value(), 17.5);
  EXPECT_DOUBLE_EQ(per_batch.value(), 6.25 / 6);
  EXPECT_DOUBLE_EQ(last_epoch.value(), 4.75);
  EXPECT_DOUBLE_EQ(train_only.value(), 9.5);
  EXPECT_DOUBLE_EQ(no_step.value(), 17.5);
  clock.Advance(10.0);
  EXPECT_DOUBLE_EQ(unattached.value(), 27.5);
}

// The label enters the layout the ranks agree on at the start of a run: the stopping options that
// differ from their defaults are in it, so a rank with another patience is told apart.
TEST(EarlyStoppingLabel, NamesTheNonDefaultOptions) {
  Engine trainer(Identity);
  auto plain = EarlyStopping::Create({.score_name = "acc"}, trainer);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->label(), "score=acc");
  auto tuned = EarlyStopping::Create({.patience = 3,
                                      .score_name = "loss",
                                      .min_delta = 0.01,
                                      .cumulative_delta = true,
                                      .mode = EarlyStoppingOptions::Mode::kMin,
                                      .threshold_mode = EarlyStoppingOptions::ThresholdMode::kRel,
                                      .stopping_threshold = 0.25,
                                      .divergence_threshold = 4.0,
                                      .check_finite = true},
                                     trainer);
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  EXPECT_EQ((*tuned)->label(),
            "score=loss, patience=3, min_delta=0.01, cumulative_delta=true, mode=min, threshold_mode=rel, "
            "stopping_threshold=0.25, divergence_threshold=4, check_finite=true");
  auto five = EarlyStopping::Create({.patience = 5, .score_name = "acc"}, trainer);
  ASSERT_TRUE(five.ok());
  EXPECT_NE((*five)->label(), (*plain)->label());
}

}  // namespace
}  // namespace ember
