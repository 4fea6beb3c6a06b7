// The parameter schedulers against the lcs_*, cas_*, pwl_*, concat_*, warmup_*, lrs_*, pgs_* and
// plateau_* scenarios of golden-training-public.jsonl (recorded on ignite v0.5.3): each run scenario is
// replayed from its inputs (optimizer, scheduler spec, event, data length, epochs), and the
// values read in the step function, the param groups at the end, the state_dicts, the history
// and the resumed run are compared with the recording. Values are compared exactly, or within a
// relative 1e-12 where a cosine is involved.
#include "handlers/param_scheduler.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "distributed/testing/fake_world.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "handlers/serialization/torch_save.h"
#include "handlers/serialization/value.h"
#include "nlohmann/json.hpp"
#include "tests/conformance/golden.h"

namespace ember {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using testing::ExpectJsonNear;
using testing::Golden;
using testing::GoldenOrdered;

// ---- Comparison -------------------------------------------------------------------------------
json ToJson(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone: return nullptr;
    case Value::Kind::kBool: return v.as_bool();
    case Value::Kind::kInt: return v.as_int();
    case Value::Kind::kDouble: {
      const double d = v.as_double();
      if (std::isnan(d)) return "nan";
      if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
      return d;
    }
    case Value::Kind::kString: return v.as_string();
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      json a = json::array();
      for (const Value& i : v.items()) a.push_back(ToJson(i));
      return a;
    }
    case Value::Kind::kDict: {
      json o = json::object();
      for (size_t i = 0; i < v.keys().size(); ++i) {
        const Value& k = v.keys()[i];
        o[k.is_string() ? k.as_string() : std::to_string(k.as_int())] = ToJson(v.values()[i]);
      }
      return o;
    }
    default: return "<tensor>";
  }
}

// ignite's state_dict keys come in its order (OrderedDict of _state_attrs), at every level.
void ExpectKeyOrder(const Value& v, const nlohmann::ordered_json& ex, const std::string& path) {
  if (v.is_dict() && ex.is_object()) {
    std::vector<std::string> actual, expected;
    for (const Value& k : v.keys()) {
      actual.push_back(k.is_string() ? k.as_string() : std::to_string(k.as_int()));
    }
    for (auto it = ex.begin(); it != ex.end(); ++it) {
      const bool method = it.value().is_string() &&
                          it.value().get<std::string>().rfind("<bound method ", 0) == 0;
      if (!method) expected.push_back(it.key());
    }
    EXPECT_EQ(actual, expected) << path;
    for (size_t i = 0; i < v.keys().size() && i < expected.size(); ++i) {
      if (ex.contains(actual[i])) {
        ExpectKeyOrder(v.values()[i], ex[actual[i]], absl::StrCat(path, ".", actual[i]));
      }
    }
  } else if (v.is_sequence() && ex.is_array()) {
    for (size_t i = 0; i < v.items().size() && i < ex.size(); ++i) {
      ExpectKeyOrder(v.items()[i], ex[i], absl::StrCat(path, "[", i, "]"));
    }
  }
}

// ignite's sd = torch.load(torch.save(sd)): through Ember's torch.save codec.
Value ThroughTorchSave(const Value& v) {
  absl::StatusOr<std::string> bytes = SerializeTorchSave(v);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return Value();
  absl::StatusOr<Value> back = ReadTorchSave(*bytes, "state_dict");
  EXPECT_TRUE(back.ok()) << back.status();
  return back.ok() ? *back : Value();
}

// ---- Building from a scenario's inputs --------------------------------------------------------
struct Optim {
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::SGD> sgd;
};

// inputs.optimizer: an SGD, one dummy parameter per group, each group the defaults plus its
// overrides.
Optim MakeOptimizer(const json& spec) {
  Optim o;
  const json& d = spec["defaults"];
  torch::optim::SGDOptions defaults(d.value("lr", 0.001));
  defaults.momentum(d.value("momentum", 0.0)).weight_decay(d.value("weight_decay", 0.0));
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const json& g : spec["param_groups"]) {
    o.params.push_back(torch::zeros({1}));
    auto options = std::make_unique<torch::optim::SGDOptions>(defaults);
    if (g.contains("lr")) options->lr(g["lr"].get<double>());
    if (g.contains("momentum")) options->momentum(g["momentum"].get<double>());
    if (g.contains("weight_decay")) options->weight_decay(g["weight_decay"].get<double>());
    groups.emplace_back(std::vector<torch::Tensor>{o.params.back()}, std::move(options));
  }
  o.sgd = std::make_unique<torch::optim::SGD>(std::move(groups), defaults);
  return o;
}

std::optional<int64_t> GroupIndex(const json& s) {
  if (s.contains("param_group_index") && !s["param_group_index"].is_null()) {
    return s["param_group_index"].get<int64_t>();
  }
  return std::nullopt;
}

std::unique_ptr<TorchLrSchedule> MakeTorchSchedule(const json& s) {
  const std::string cls = s["class"];
  if (cls == "StepLR") return TorchLrSchedule::StepLR(s["step_size"], s.value("gamma", 0.1));
  if (cls == "ExponentialLR") return TorchLrSchedule::ExponentialLR(s["gamma"]);
  if (cls == "MultiStepLR") {
    return TorchLrSchedule::MultiStepLR(s["milestones"].get<std::vector<int64_t>>(),
                                        s.value("gamma", 0.1));
  }
  if (cls == "CosineAnnealingLR") {
    return TorchLrSchedule::CosineAnnealingLR(s["T_max"], s.value("eta_min", 0.0));
  }
  if (cls == "LambdaLR") {
    EXPECT_EQ(s["lr_lambda"], "1 / (1 + epoch)") << "a formula this test does not know";
    return TorchLrSchedule::LambdaLR([](int64_t epoch) { return 1.0 / (1 + epoch); });
  }
  if (cls == "CosineAnnealingWarmRestarts") {
    return TorchLrSchedule::CosineAnnealingWarmRestarts(s["T_0"], s.value("T_mult", int64_t{1}),
                                                        s.value("eta_min", 0.0));
  }
  ADD_FAILURE() << "unknown torch scheduler " << cls;
  return nullptr;
}

bool IsTorchSchedule(const json& s) {
  const std::string cls = s["class"];
  return cls == "StepLR" || cls == "ExponentialLR" || cls == "MultiStepLR" ||
         cls == "CosineAnnealingLR" || cls == "LambdaLR" || cls == "CosineAnnealingWarmRestarts";
}

CyclicalSchedulerOptions CyclicalOptions(const json& s) {
  return {.param_name = s["param_name"],
          .start_value = s["start_value"],
          .end_value = s["end_value"],
          .cycle_size = s["cycle_size"],
          .cycle_mult = s.value("cycle_mult", 1.0),
          .start_value_mult = s.value("start_value_mult", 1.0),
          .end_value_mult = s.value("end_value_mult", 1.0),
          .warmup_duration = s.value("warmup_duration", int64_t{0}),
          .save_history = s.value("save_history", false),
          .param_group_index = GroupIndex(s),
          .monotonic = s.value("monotonic", false)};
}

std::vector<std::pair<int64_t, double>> MilestonesValues(const json& s) {
  std::vector<std::pair<int64_t, double>> out;
  for (const json& p : s["milestones_values"]) out.emplace_back(p[0], p[1]);
  return out;
}

template <typename T>
std::unique_ptr<ParamScheduler> Unwrap(absl::StatusOr<std::unique_ptr<T>> s) {
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return nullptr;
  return std::unique_ptr<ParamScheduler>(s->release());
}

std::unique_ptr<ParamScheduler> Build(const json& s, torch::optim::Optimizer& opt) {
  const std::string cls = s["class"];
  if (cls == "LinearCyclicalScheduler") {
    return Unwrap(LinearCyclicalScheduler::Create(opt, CyclicalOptions(s)));
  }
  if (cls == "CosineAnnealingScheduler") {
    return Unwrap(CosineAnnealingScheduler::Create(opt, CyclicalOptions(s)));
  }
  if (cls == "PiecewiseLinear") {
    return Unwrap(PiecewiseLinear::Create(opt, {.param_name = s["param_name"],
                                                .milestones_values = MilestonesValues(s),
                                                .save_history = s.value("save_history", false),
                                                .param_group_index = GroupIndex(s)}));
  }
  if (cls == "ConcatScheduler" || cls == "ParamGroupScheduler") {
    std::vector<std::unique_ptr<ParamScheduler>> inner;
    for (const json& i : s["schedulers"]) inner.push_back(Build(i, opt));
    if (cls == "ConcatScheduler") {
      return Unwrap(ConcatScheduler::Create(std::move(inner),
                                            s["durations"].get<std::vector<int64_t>>(),
                                            s.value("save_history", false)));
    }
    return Unwrap(ParamGroupScheduler::Create(
        std::move(inner), s.value("names", std::vector<std::string>{}),
        s.value("save_history", false)));
  }
  if (cls == "LRScheduler") {
    return Unwrap(LRScheduler::Create(opt, MakeTorchSchedule(s["lr_scheduler"]),
                                      {.save_history = s.value("save_history", false),
                                       .use_legacy = s.value("use_legacy", false)}));
  }
  if (cls == "create_lr_scheduler_with_warmup") {
    WarmupOptions w{.warmup_start_value = s["warmup_start_value"],
                    .warmup_duration = s["warmup_duration"],
                    .save_history = s.value("save_history", false)};
    if (s.contains("warmup_end_value") && !s["warmup_end_value"].is_null()) {
      w.warmup_end_value = s["warmup_end_value"].get<double>();
    }
    if (IsTorchSchedule(s["lr_scheduler"])) {
      return Unwrap(CreateLrSchedulerWithWarmup(opt, MakeTorchSchedule(s["lr_scheduler"]), w));
    }
    return Unwrap(CreateLrSchedulerWithWarmup(Build(s["lr_scheduler"], opt), w));
  }
  ADD_FAILURE() << "unknown scheduler class " << cls;
  return nullptr;
}

Event EventNamed(const std::string& name) {
  if (name == "ITERATION_STARTED") return Events::IterationStarted();
  if (name == "ITERATION_COMPLETED") return Events::IterationCompleted();
  if (name == "EPOCH_STARTED") return Events::EpochStarted();
  ADD_FAILURE() << "unknown event " << name;
  return Events::IterationStarted();
}

// The options each row records (the keys besides iteration and epoch).
std::vector<std::string> RecordedOptions(const json& rows) {
  std::vector<std::string> names;
  for (auto it = rows[0].begin(); it != rows[0].end(); ++it) {
    if (it.key() != "iteration" && it.key() != "epoch") names.push_back(it.key());
  }
  return names;
}

json Groups(const torch::optim::Optimizer& opt, const std::vector<std::string>& names) {
  json groups = json::array();
  for (size_t g = 0; g < opt.param_groups().size(); ++g) {
    json entry = json::object();
    for (const std::string& n : names) entry[n] = *GetParamGroupOption(opt, g, n);
    groups.push_back(entry);
  }
  return groups;
}

// The recorded options of the expected groups, without momentum/initial_lr when not recorded.
json Select(const json& groups, const std::vector<std::string>& names) {
  json out = json::array();
  for (const json& g : groups) {
    json entry = json::object();
    for (const std::string& n : names) entry[n] = g[n];
    out.push_back(entry);
  }
  return out;
}

struct Setup {
  Optim optim;
  std::vector<std::unique_ptr<ParamScheduler>> handlers;
};

Setup Make(const json& inputs) {
  Setup s{MakeOptimizer(inputs["optimizer"]), {}};
  for (const json& h : inputs["handlers"]) s.handlers.push_back(Build(h["scheduler"], *s.optim.sgd));
  return s;
}

struct Trainer {
  std::vector<int> data;
  json rows = json::array();
  std::unique_ptr<Engine> engine;
};

void Attach(Trainer& t, Setup& s, const json& inputs, const std::vector<std::string>& recorded) {
  t.data.assign(inputs["data_len"].get<size_t>(), 0);
  torch::optim::Optimizer* opt = s.optim.sgd.get();
  json* rows = &t.rows;
  t.engine = std::make_unique<Engine>([opt, rows, recorded](Engine& e, const int&) {
    json row = {{"iteration", e.state().iteration}, {"epoch", e.state().epoch}};
    for (const std::string& n : recorded) {
      json values = json::array();
      for (size_t g = 0; g < opt->param_groups().size(); ++g) {
        values.push_back(*GetParamGroupOption(*opt, g, n));
      }
      row[n] = values;
    }
    rows->push_back(row);
  });
  for (size_t i = 0; i < s.handlers.size(); ++i) {
    t.engine->On(EventNamed(inputs["handlers"][i]["event"]), *s.handlers[i]);
  }
}

json StateDicts(const Setup& s) {
  json out = json::array();
  for (const auto& h : s.handlers) out.push_back(ToJson(h->StateDict()));
  return out;
}

// Replays one run scenario: the uninterrupted run, then the run cut after resume.after_epoch
// and resumed from state_dicts on fresh objects.
void CheckRunScenario(const std::string& name) {
  SCOPED_TRACE(name);
  const json g = Golden(name);
  ASSERT_TRUE(g.is_object());
  const json& in = g["inputs"];
  const json& ex = g["expected"];
  const double rel = g.dump().find("Cosine") != std::string::npos ? 1e-12 : 0.0;
  const std::vector<std::string> recorded = RecordedOptions(ex["rows"]);
  const int64_t max_epochs = in["max_epochs"];

  // Uninterrupted.
  Setup full = Make(in);
  ASSERT_FALSE(full.handlers.empty());
  for (const auto& h : full.handlers) ASSERT_NE(h, nullptr);
  ExpectJsonNear(Groups(*full.optim.sgd, recorded), Select(ex["param_groups_before_run"], recorded),
                 0.0, "param_groups_before_run");
  Trainer t;
  Attach(t, full, in, recorded);
  ASSERT_TRUE(t.engine->Run(t.data, {.max_epochs = max_epochs}).ok());
  ExpectJsonNear(t.rows, ex["rows"], rel, "rows");
  ExpectJsonNear(Groups(*full.optim.sgd, recorded), Select(ex["param_groups_at_end"], recorded),
                 rel, "param_groups_at_end");
  ExpectJsonNear(StateDicts(full), ex["state_dicts_at_end"], rel, "state_dicts_at_end");
  const nlohmann::ordered_json ordered = GoldenOrdered(name);
  for (size_t i = 0; i < full.handlers.size(); ++i) {
    ExpectKeyOrder(full.handlers[i]->StateDict(),
                   ordered["expected"]["state_dicts_at_end"][i], "state_dicts_at_end");
  }
  if (ex.contains("param_history")) {
    json history = json::object();
    for (const auto& [key, entries] : full.handlers[0]->param_history()) history[key] = entries;
    ExpectJsonNear(history, ex["param_history"], rel, "param_history");
  }

  // Cut after resume.after_epoch, resumed on fresh objects.
  if (!in.contains("resume")) return;
  const json& rex = ex["resume"];
  Setup first = Make(in);
  Trainer t1;
  Attach(t1, first, in, recorded);
  ASSERT_TRUE(t1.engine->Run(t1.data, {.max_epochs = in["resume"]["after_epoch"]}).ok());
  const json sds = StateDicts(first);
  ExpectJsonNear(sds, rex["state_dicts"], rel, "resume.state_dicts");
  std::vector<Value> saved;
  for (const auto& h : first.handlers) saved.push_back(ThroughTorchSave(h->StateDict()));

  Setup second = Make(in);
  const bool optimizer_restored =
      in["resume"]["procedure"].get<std::string>().find("NOT restored") == std::string::npos;
  if (optimizer_restored) {
    // optimizer.load_state_dict: the group options as they were at the cut.
    for (size_t gi = 0; gi < first.optim.sgd->param_groups().size(); ++gi) {
      for (const std::string& n : SchedulableOptionNames(*first.optim.sgd)) {
        ASSERT_TRUE(SetParamGroupOption(*second.optim.sgd, gi, n,
                                        *GetParamGroupOption(*first.optim.sgd, gi, n))
                        .ok());
      }
    }
    ExpectJsonNear(Groups(*second.optim.sgd, recorded), Select(rex["param_groups"], recorded), rel,
                   "resume.param_groups");
  }
  for (size_t i = 0; i < second.handlers.size(); ++i) {
    absl::Status s = second.handlers[i]->LoadStateDict(saved[i]);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(ToJson(second.handlers[i]->StateDict()), ToJson(first.handlers[i]->StateDict()));
  }
  Trainer t2;
  Attach(t2, second, in, recorded);
  ASSERT_TRUE(t2.engine->LoadStateDict(t1.engine->GetStateDict()).ok());
  ASSERT_TRUE(t2.engine->Run(t2.data, {.max_epochs = max_epochs}).ok());
  ExpectJsonNear(t2.rows, rex["rows_after_resume"], rel, "rows_after_resume");
  ExpectJsonNear(Groups(*second.optim.sgd, recorded), Select(rex["param_groups_at_end"], recorded),
                 rel, "resume.param_groups_at_end");
  if (rex["matches_uninterrupted"].get<bool>()) {
    json tail(t.rows.end() - static_cast<std::ptrdiff_t>(t2.rows.size()), t.rows.end());
    EXPECT_EQ(t2.rows, tail) << "the resumed run differs from the uninterrupted one";
  }
}

// ---- Run scenarios ----------------------------------------------------------------------------
TEST(LinearCyclicalConformance, IterationStartedResume) { CheckRunScenario("lcs_iteration_started_resume"); }
TEST(LinearCyclicalConformance, CycleAndValueMults) { CheckRunScenario("lcs_cycle_and_value_mults"); }
TEST(LinearCyclicalConformance, MonotonicWarmup) { CheckRunScenario("lcs_monotonic_warmup"); }
TEST(LinearCyclicalConformance, EpochStartedResume) { CheckRunScenario("lcs_epoch_started_resume"); }
TEST(LinearCyclicalConformance, GroupIndexAndMomentum) { CheckRunScenario("lcs_group_index_and_momentum"); }
TEST(CosineAnnealingConformance, IterationStartedResume) { CheckRunScenario("cas_iteration_started_resume"); }
TEST(CosineAnnealingConformance, CycleMultValueMults) { CheckRunScenario("cas_cycle_mult_value_mults"); }
TEST(CosineAnnealingConformance, WarmupResume) { CheckRunScenario("cas_warmup_resume"); }
TEST(CosineAnnealingConformance, LrAndMomentum) { CheckRunScenario("cas_lr_and_momentum"); }
TEST(PiecewiseLinearConformance, DocsResume) { CheckRunScenario("pwl_docs_resume"); }
TEST(PiecewiseLinearConformance, DuplicateMilestoneJump) { CheckRunScenario("pwl_duplicate_milestone_jump"); }
TEST(PiecewiseLinearConformance, TwoGroups) { CheckRunScenario("pwl_two_groups"); }
TEST(PiecewiseLinearConformance, WeightDecayAndLr) { CheckRunScenario("pwl_weight_decay_and_lr"); }
TEST(ConcatConformance, DocsResumeAtSwitch) { CheckRunScenario("concat_docs_resume_at_switch"); }
TEST(ConcatConformance, ThreeSaveHistory) { CheckRunScenario("concat_three_save_history"); }
TEST(WarmupConformance, TorchExponentialDocs) { CheckRunScenario("warmup_torch_exponential_docs"); }
TEST(WarmupConformance, TorchStepLrEndDiffers) { CheckRunScenario("warmup_torch_steplr_end_differs"); }
TEST(WarmupConformance, IgniteCosineSameEnd) { CheckRunScenario("warmup_ignite_cosine_same_end"); }
TEST(WarmupConformance, EndNoneTwoGroups) { CheckRunScenario("warmup_end_none_two_groups"); }
TEST(LRSchedulerConformance, StepLrDocsResume) { CheckRunScenario("lrs_steplr_docs_resume"); }
TEST(LRSchedulerConformance, ExponentialResume) { CheckRunScenario("lrs_exponential_resume"); }
TEST(LRSchedulerConformance, MultiStepResume) { CheckRunScenario("lrs_multistep_resume"); }
TEST(LRSchedulerConformance, CosineAnnealingBeyondTmax) { CheckRunScenario("lrs_cosine_annealing_beyond_tmax"); }
TEST(LRSchedulerConformance, UseLegacyIterationCompleted) { CheckRunScenario("lrs_use_legacy_iteration_completed"); }
TEST(LRSchedulerConformance, TwoGroupsEpochStarted) { CheckRunScenario("lrs_two_groups_epoch_started"); }
TEST(LRSchedulerConformance, LambdaLrResume) { CheckRunScenario("lrs_lambdalr_resume"); }
// ignite's state_dict holds the pickled adapter object; Ember's holds torch's state_dict for
// CosineAnnealingWarmRestarts (T_0, T_i, T_mult, eta_min, T_cur, ...). The values and the
// resumed run are ignite's.
TEST(LRSchedulerConformance, CosineWarmRestarts) { CheckRunScenario("lrs_cosine_warm_restarts"); }
// ignite does not resume exactly here either (matches_uninterrupted is false): the recorded
// resumed rows are what Ember gives too.
TEST(LRSchedulerConformance, ResumeWithoutOptimizerState) { CheckRunScenario("lrs_resume_without_optimizer_state"); }
TEST(ParamGroupConformance, DocsCosineResume) { CheckRunScenario("pgs_docs_cosine_resume"); }
TEST(ParamGroupConformance, MixedSaveHistory) { CheckRunScenario("pgs_mixed_save_history"); }

// ---- simulate_values --------------------------------------------------------------------------
json SimJson(const SimulatedValues& values) {
  json out = json::array();
  for (const auto& [i, v] : values) {
    json entry = {i};
    for (double d : v) entry.push_back(d);
    out.push_back(entry);
  }
  return out;
}

TEST(SimulateValuesConformance, LinearCyclical) {
  const json ex = Golden("lcs_simulate_values")["expected"]["values"];
  // The calls' arguments (inputs.calls).
  auto a = LinearCyclicalScheduler::Simulate(
      14, {.param_name = "lr", .start_value = 1.0, .end_value = 0.0, .cycle_size = 4,
           .cycle_mult = 2.0});
  ASSERT_TRUE(a.ok()) << a.status();
  ExpectJsonNear(SimJson(*a), ex[0], 0.0, "values[0]");
  auto b = LinearCyclicalScheduler::Simulate(
      10, {.param_name = "lr", .start_value = 0.0, .end_value = 1.0, .cycle_size = 3,
           .warmup_duration = 2, .monotonic = true});
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectJsonNear(SimJson(*b), ex[1], 0.0, "values[1]");
}

TEST(SimulateValuesConformance, CosineAnnealing) {
  const json ex = Golden("cas_simulate_values")["expected"]["values"];
  auto a = CosineAnnealingScheduler::Simulate(
      16, {.param_name = "lr", .start_value = 1.0, .end_value = 0.0, .cycle_size = 5,
           .cycle_mult = 2.0, .start_value_mult = 0.8});
  ASSERT_TRUE(a.ok()) << a.status();
  ExpectJsonNear(SimJson(*a), ex[0], 1e-12, "values[0]");
  auto b = CosineAnnealingScheduler::Simulate(
      12, {.param_name = "lr", .start_value = 0.2, .end_value = 0.0, .cycle_size = 4,
           .warmup_duration = 2});
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectJsonNear(SimJson(*b), ex[1], 1e-12, "values[1]");
}

TEST(SimulateValuesConformance, PiecewiseLinear) {
  const json ex = Golden("pwl_simulate_values")["expected"]["values"];
  auto a = PiecewiseLinear::Simulate(
      11, {.param_name = "lr", .milestones_values = {{2, 1.0}, {5, 0.5}, {7, 0.5}, {9, 0.0}}});
  ASSERT_TRUE(a.ok()) << a.status();
  ExpectJsonNear(SimJson(*a), ex[0], 0.0, "values[0]");
}

TEST(SimulateValuesConformance, Concat) {
  const json g = Golden("concat_simulate_values");
  const json& ex = g["expected"];
  Optim o = MakeOptimizer(g["inputs"]["optimizer"]);
  {
    std::vector<std::unique_ptr<ParamScheduler>> parts;
    parts.push_back(Unwrap(LinearCyclicalScheduler::Create(
        *o.sgd, {.param_name = "lr", .start_value = 0.0, .end_value = 1.0, .cycle_size = 8})));
    parts.push_back(Unwrap(CosineAnnealingScheduler::Create(
        *o.sgd, {.param_name = "lr", .start_value = 1.0, .end_value = 0.2, .cycle_size = 4})));
    auto concat = ConcatScheduler::Create(std::move(parts), {4});
    ASSERT_TRUE(concat.ok()) << concat.status();
    auto values = (*concat)->SimulateValues(10);
    ASSERT_TRUE(values.ok()) << values.status();
    ExpectJsonNear(SimJson(*values), ex["values"][0], 1e-12, "values[0]");
    // Restored afterwards.
    EXPECT_EQ((*concat)->schedulers()[0]->event_index(),
              ex["after_simulation"]["lcs_event_index"].get<int64_t>());
    EXPECT_EQ((*concat)->schedulers()[1]->event_index(),
              ex["after_simulation"]["cas_event_index"].get<int64_t>());
    EXPECT_EQ(*GetParamGroupOption(*o.sgd, 0, "lr"),
              ex["after_simulation"]["optimizer_lr"].get<double>());
  }
  {
    std::vector<std::unique_ptr<ParamScheduler>> parts;
    parts.push_back(Unwrap(PiecewiseLinear::Create(
        *o.sgd, {.param_name = "lr", .milestones_values = {{0, 0.5}, {3, 0.1}}})));
    parts.push_back(Unwrap(LinearCyclicalScheduler::Create(
        *o.sgd, {.param_name = "lr", .start_value = 0.1, .end_value = 0.3, .cycle_size = 4})));
    auto concat = ConcatScheduler::Create(std::move(parts), {3});
    ASSERT_TRUE(concat.ok()) << concat.status();
    auto values = (*concat)->SimulateValues(8, {"lr", "momentum"});
    ASSERT_TRUE(values.ok()) << values.status();
    ExpectJsonNear(SimJson(*values), ex["values"][1], 0.0, "values[1]");
  }
}

TEST(SimulateValuesConformance, LRScheduler) {
  const json g = Golden("lrs_simulate_values");
  const json& ex = g["expected"];
  Optim o = MakeOptimizer(g["inputs"]["optimizer"]);
  auto step = LRScheduler::Create(*o.sgd, TorchLrSchedule::StepLR(3, 0.5));
  ASSERT_TRUE(step.ok()) << step.status();
  auto a = (*step)->SimulateValues(10);
  ASSERT_TRUE(a.ok()) << a.status();
  ExpectJsonNear(SimJson(*a), ex["values"][0], 0.0, "values[0]");
  EXPECT_EQ((*step)->last_epoch(), ex["steplr_after_simulation"]["last_epoch"].get<int64_t>());
  EXPECT_EQ(*GetParamGroupOption(*o.sgd, 0, "lr"),
            ex["steplr_after_simulation"]["optimizer_lr"].get<double>());
  Optim o2 = MakeOptimizer(g["inputs"]["optimizer"]);
  auto cos = LRScheduler::Create(*o2.sgd, TorchLrSchedule::CosineAnnealingLR(3, 0.0));
  ASSERT_TRUE(cos.ok()) << cos.status();
  auto b = (*cos)->SimulateValues(8);
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectJsonNear(SimJson(*b), ex["values"][1], 1e-12, "values[1]");
}

TEST(SimulateValuesConformance, ParamGroup) {
  const json g = Golden("pgs_simulate_values");
  Optim o = MakeOptimizer(g["inputs"]["optimizer"]);
  std::vector<std::unique_ptr<ParamScheduler>> parts;
  parts.push_back(Unwrap(LinearCyclicalScheduler::Create(
      *o.sgd, {.param_name = "lr", .start_value = 0.0, .end_value = 1.0, .cycle_size = 4,
               .param_group_index = 0})));
  parts.push_back(Unwrap(PiecewiseLinear::Create(
      *o.sgd, {.param_name = "lr", .milestones_values = {{0, 0.5}, {4, 0.1}},
               .param_group_index = 1})));
  auto pgs = ParamGroupScheduler::Create(std::move(parts), {"s1", "s2"});
  ASSERT_TRUE(pgs.ok()) << pgs.status();
  auto values = (*pgs)->SimulateGroupValues(8);
  ASSERT_TRUE(values.ok()) << values.status();
  ExpectJsonNear(SimJson(*values), g["expected"]["values"], 0.0, "values");
  json after = json::array();
  for (const auto& s : (*pgs)->schedulers()) after.push_back(s->event_index());
  EXPECT_EQ(after, g["expected"]["event_indices_after"]);
}

// ignite's output_simulated_values is SimulateValues(n) on what CreateLrSchedulerWithWarmup
// returns; the run afterwards is unaffected.
TEST(SimulateValuesConformance, WarmupOutputSimulatedValues) {
  const json g = Golden("warmup_output_simulated_values");
  Optim o = MakeOptimizer(g["inputs"]["optimizer"]);
  auto warm = CreateLrSchedulerWithWarmup(
      *o.sgd, TorchLrSchedule::ExponentialLR(0.9),
      {.warmup_start_value = 0.0, .warmup_duration = 5, .warmup_end_value = 0.2});
  ASSERT_TRUE(warm.ok()) << warm.status();
  auto values = (*warm)->SimulateValues(12);
  ASSERT_TRUE(values.ok()) << values.status();
  ExpectJsonNear(SimJson(*values), g["expected"]["output_simulated_values"], 0.0, "values");
  std::vector<int> data(12, 0);
  json rows = json::array();
  Engine trainer([&](Engine& e, const int&) {
    rows.push_back({{"iteration", e.state().iteration},
                    {"epoch", e.state().epoch},
                    {"lr", {*GetParamGroupOption(*o.sgd, 0, "lr")}}});
  });
  trainer.On(Events::IterationStarted(), **warm);
  ASSERT_TRUE(trainer.Run(data, {.max_epochs = 1}).ok());
  ExpectJsonNear(rows, g["expected"]["rows"], 0.0, "rows");
}

// ---- Argument errors --------------------------------------------------------------------------
// The message ignite raises for case `i` of an *_errors scenario.
std::string Raised(const json& g, size_t i) {
  const json& r = g["expected"]["results"][i]["raised"];
  return r.is_null() ? std::string() : r["message"].get<std::string>();
}

TEST(ParamSchedulerErrors, LinearCyclical) {
  const json g = Golden("lcs_errors");
  Optim o = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
  auto a = LinearCyclicalScheduler::Create(
      *o.sgd, {.param_name = "lr", .start_value = 1.0, .end_value = 0.0, .cycle_size = 1});
  EXPECT_EQ(std::string(a.status().message()), Raised(g, 0));
  auto b = LinearCyclicalScheduler::Create(
      *o.sgd, {.param_name = "lr", .start_value = 0.0, .end_value = 1.0, .cycle_size = 4,
               .warmup_duration = 2});
  EXPECT_EQ(std::string(b.status().message()), Raised(g, 1));
  ASSERT_TRUE(g["expected"]["results"][2]["raised"].is_null());
  EXPECT_TRUE(LinearCyclicalScheduler::Create(
                  *o.sgd, {.param_name = "lr", .start_value = 1.0, .end_value = 0.0,
                           .cycle_size = 2})
                  .ok());
}

// "float milestone" and "pair given as a list" are Python type checks: a C++ milestone is an
// int64_t and a pair is a std::pair, so those calls do not compile.
TEST(ParamSchedulerErrors, PiecewiseLinear) {
  const json g = Golden("pwl_errors");
  Optim o = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
  auto a = PiecewiseLinear::Create(*o.sgd, {.param_name = "lr", .milestones_values = {}});
  EXPECT_EQ(std::string(a.status().message()), Raised(g, 0));
  auto b = PiecewiseLinear::Create(
      *o.sgd, {.param_name = "lr", .milestones_values = {{0, 1.0}, {5, 0.5}, {3, 0.1}}});
  EXPECT_EQ(std::string(b.status().message()), Raised(g, 1));
}

std::unique_ptr<ParamScheduler> Lcs(torch::optim::Optimizer& opt, const std::string& name = "lr") {
  return Unwrap(LinearCyclicalScheduler::Create(
      opt, {.param_name = name, .start_value = 1.0, .end_value = 0.0, .cycle_size = 4}));
}

std::vector<std::unique_ptr<ParamScheduler>> Two(std::unique_ptr<ParamScheduler> a,
                                                 std::unique_ptr<ParamScheduler> b) {
  std::vector<std::unique_ptr<ParamScheduler>> v;
  v.push_back(std::move(a));
  v.push_back(std::move(b));
  return v;
}

TEST(ParamSchedulerErrors, Concat) {
  const json g = Golden("concat_errors");
  Optim o = MakeOptimizer(
      {{"defaults", {{"lr", 0.1}, {"momentum", 0.9}}}, {"param_groups", {json::object()}}});
  Optim o2 = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
  // ignite prints the list's repr ("[<...LinearCyclicalScheduler object at 0x...>]"); Ember
  // gives the count.
  std::vector<std::unique_ptr<ParamScheduler>> one;
  one.push_back(Lcs(*o.sgd));
  auto a = ConcatScheduler::Create(std::move(one), {});
  const std::string ignite_a = Raised(g, 0);
  EXPECT_EQ(std::string(a.status().message()),
            ignite_a.substr(0, ignite_a.find(" but given ")) + " but given 1");
  auto b = ConcatScheduler::Create(Two(Lcs(*o.sgd), Lcs(*o.sgd)), {2, 3});
  EXPECT_EQ(std::string(b.status().message()), Raised(g, 1));
  // Case 2 (a float duration) does not compile: durations are int64_t.
  auto d = ConcatScheduler::Create(Two(Lcs(*o.sgd, "lr"), Lcs(*o.sgd, "momentum")), {2});
  EXPECT_EQ(std::string(d.status().message()), Raised(g, 3));
  auto e = ConcatScheduler::Create(Two(Lcs(*o.sgd), Lcs(*o2.sgd)), {2});
  EXPECT_EQ(std::string(e.status().message()), Raised(g, 4));
}

// "float warmup_duration" and "optimizer as scheduler" are Python type checks (C++ types here).
TEST(ParamSchedulerErrors, Warmup) {
  const json g = Golden("warmup_errors");
  Optim o = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
  auto a = CreateLrSchedulerWithWarmup(*o.sgd, TorchLrSchedule::StepLR(2),
                                       {.warmup_start_value = 0.0, .warmup_duration = 1});
  EXPECT_EQ(std::string(a.status().message()), Raised(g, 0));
  auto b = CreateLrSchedulerWithWarmup(*o.sgd, TorchLrSchedule::StepLR(2),
                                       {.warmup_start_value = 0.0, .warmup_duration = 0});
  EXPECT_EQ(std::string(b.status().message()), Raised(g, 1));
}

// "not a scheduler" is a Python type check (a C++ vector holds schedulers only).
TEST(ParamSchedulerErrors, ParamGroup) {
  const json g = Golden("pgs_errors");
  Optim o = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
  auto a = ParamGroupScheduler::Create(Two(Lcs(*o.sgd), Lcs(*o.sgd)), {"a"});
  EXPECT_EQ(std::string(a.status().message()), Raised(g, 0));
  auto ab = ParamGroupScheduler::Create(Two(Lcs(*o.sgd), Lcs(*o.sgd)), {"a", "b"});
  auto ax = ParamGroupScheduler::Create(Two(Lcs(*o.sgd), Lcs(*o.sgd)), {"a", "x"});
  ASSERT_TRUE(ab.ok() && ax.ok());
  EXPECT_EQ(std::string((*ab)->LoadStateDict((*ax)->StateDict()).message()), Raised(g, 2));
}

// Ember's own checks: an option the optimizer does not have is named with the allowed ones.
TEST(ParamSchedulerErrors, UnknownOptionNamesTheAllowedOnes) {
  Optim o = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
  auto a = LinearCyclicalScheduler::Create(
      *o.sgd, {.param_name = "betas", .start_value = 1.0, .end_value = 0.0, .cycle_size = 4});
  EXPECT_EQ(std::string(a.status().message()),
            "param_name 'betas' is not a schedulable option of SGD's param groups; allowed: lr, "
            "momentum, dampening, weight_decay");
  auto b = PiecewiseLinear::Create(
      *o.sgd, {.param_name = "lr", .milestones_values = {{0, 1.0}}, .param_group_index = 3});
  EXPECT_THAT(std::string(b.status().message()), HasSubstr("param_group_index 3 is out of range"));

  torch::Tensor p = torch::zeros({1});
  torch::optim::Adam adam(std::vector<torch::Tensor>{p}, torch::optim::AdamOptions(0.1));
  auto c = CosineAnnealingScheduler::Create(
      adam, {.param_name = "momentum", .start_value = 1.0, .end_value = 0.0, .cycle_size = 4});
  EXPECT_EQ(std::string(c.status().message()),
            "param_name 'momentum' is not a schedulable option of Adam's param groups; allowed: "
            "lr, eps, weight_decay");
  auto d = CosineAnnealingScheduler::Create(
      adam, {.param_name = "weight_decay", .start_value = 0.1, .end_value = 0.0, .cycle_size = 4});
  ASSERT_TRUE(d.ok()) << d.status();
  (*d)->Step();
  EXPECT_EQ(adam.param_groups()[0].options().get_lr(), 0.1);
  EXPECT_EQ(static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options()).weight_decay(),
            0.1);
}

// ---- ReduceLROnPlateauScheduler ---------------------------------------------------------------
ReduceLROnPlateauOptions PlateauOptions(const json& s) {
  ReduceLROnPlateauOptions o{.metric_name = s["metric_name"]};
  o.mode = s.value("mode", o.mode);
  o.factor = s.value("factor", o.factor);
  o.patience = s.value("patience", o.patience);
  o.threshold = s.value("threshold", o.threshold);
  o.threshold_mode = s.value("threshold_mode", o.threshold_mode);
  o.cooldown = s.value("cooldown", o.cooldown);
  o.min_lr = s.value("min_lr", o.min_lr);
  o.save_history = s.value("save_history", false);
  o.param_group_index = GroupIndex(s);
  return o;
}

struct PlateauRun {
  json rows = json::array();
  json evaluations = json::array();
  std::unique_ptr<Engine> trainer, evaluator;
  std::vector<int> data, val = {0};
  size_t k = 0;  // evaluations so far
};

// The recorded setup: the trainer records the lr in its step and runs the evaluator at
// ITERATION_COMPLETED or EPOCH_COMPLETED; the evaluator's EPOCH_COMPLETED sets the k-th metric;
// the scheduler is on the evaluator's COMPLETED.
void SetUpPlateau(PlateauRun& r, const json& in, torch::optim::Optimizer* opt,
                  ReduceLROnPlateauScheduler* sched) {
  const std::string metric = in["scheduler"]["metric_name"];
  const std::vector<double> metrics = in["metric_values"].get<std::vector<double>>();
  r.data.assign(in["data_len"].get<size_t>(), 0);
  r.trainer = std::make_unique<Engine>([&r, opt](Engine& e, const int&) {
    json lrs = json::array();
    for (const auto& g : opt->param_groups()) lrs.push_back(g.options().get_lr());
    r.rows.push_back({{"iteration", e.state().iteration}, {"epoch", e.state().epoch}, {"lr", lrs}});
  });
  r.evaluator = std::make_unique<Engine>([](Engine&, const int&) {});
  r.evaluator->On(Events::EpochCompleted(), [&r, metric, metrics](Engine& e) {
    e.state().metrics[metric] = metrics.at(r.k);
  });
  r.evaluator->On(Events::Completed(), *sched);
  const bool per_iteration =
      in["setup"].get<std::string>().find("at trainer ITERATION_COMPLETED") != std::string::npos;
  // Recorded once the evaluation is over: the scheduler decides at the end of the COMPLETED
  // firing (a synchronized handler), after the plain handlers of that firing.
  r.trainer->On(per_iteration ? Events::IterationCompleted() : Events::EpochCompleted(),
                [&r, opt, sched, metrics](Engine&) {
                  ASSERT_TRUE(r.evaluator->Run(r.val).ok());
                  json lrs = json::array();
                  for (const auto& g : opt->param_groups()) lrs.push_back(g.options().get_lr());
                  r.evaluations.push_back(
                      {{"evaluation", r.k + 1}, {"metric", metrics.at(r.k)}, {"lr_after", lrs},
                       {"best", sched->best()}, {"num_bad_epochs", sched->num_bad_epochs()},
                       {"cooldown_counter", sched->cooldown_counter()},
                       {"last_epoch", sched->last_epoch()}});
                  ++r.k;
                });
}

int64_t PlateauEpochs(const json& in) {
  const int64_t n = static_cast<int64_t>(in["metric_values"].size());
  const bool per_iteration =
      in["setup"].get<std::string>().find("at trainer ITERATION_COMPLETED") != std::string::npos;
  return per_iteration ? n / in["data_len"].get<int64_t>() : n;
}

void CheckPlateauScenario(const std::string& name) {
  SCOPED_TRACE(name);
  const json g = Golden(name);
  const json& in = g["inputs"];
  const json& ex = g["expected"];
  Optim o = MakeOptimizer(in["optimizer"]);
  auto sched = ReduceLROnPlateauScheduler::Create(*o.sgd, PlateauOptions(in["scheduler"]));
  ASSERT_TRUE(sched.ok()) << sched.status();
  PlateauRun r;
  SetUpPlateau(r, in, o.sgd.get(), sched->get());
  ASSERT_TRUE(r.trainer->Run(r.data, {.max_epochs = PlateauEpochs(in)}).ok());
  ExpectJsonNear(r.rows, ex["rows"], 0.0, "rows");
  ExpectJsonNear(r.evaluations, ex["evaluations"], 0.0, "evaluations");
  ExpectJsonNear(ToJson((*sched)->StateDict()), ex["state_dict_at_end"], 0.0, "state_dict_at_end");
  ExpectKeyOrder((*sched)->StateDict(), GoldenOrdered(name)["expected"]["state_dict_at_end"],
                 "state_dict_at_end");
  if (ex.contains("trainer_param_history")) {
    json history = json::object();
    for (const auto& [key, entries] : (*sched)->param_history()) history[key] = entries;
    ExpectJsonNear(history, ex["trainer_param_history"], 0.0, "param_history");
  }
  if (!in.contains("resume")) return;
  // Resume: ignite's loaded scheduler keeps reducing the lr of the optimizer it was saved from
  // (its state_dict carries the bound method _reduce_lr), so its resumed run differs
  // (matches_uninterrupted is false). Ember's acts on its own optimizer: the resumed run is the
  // uninterrupted one.
  const json& rex = ex["resume"];
  EXPECT_FALSE(rex["matches_uninterrupted"].get<bool>());
  Optim o1 = MakeOptimizer(in["optimizer"]);
  auto s1 = ReduceLROnPlateauScheduler::Create(*o1.sgd, PlateauOptions(in["scheduler"]));
  ASSERT_TRUE(s1.ok());
  PlateauRun r1;
  SetUpPlateau(r1, in, o1.sgd.get(), s1->get());
  ASSERT_TRUE(r1.trainer->Run(r1.data, {.max_epochs = in["resume"]["after_epoch"]}).ok());
  ExpectJsonNear(ToJson((*s1)->StateDict()), rex["state_dict"], 0.0, "resume.state_dict");
  Optim o2 = MakeOptimizer(in["optimizer"]);
  auto s2 = ReduceLROnPlateauScheduler::Create(*o2.sgd, PlateauOptions(in["scheduler"]));
  ASSERT_TRUE(s2.ok());
  for (size_t gi = 0; gi < o1.sgd->param_groups().size(); ++gi) {
    o2.sgd->param_groups()[gi].options().set_lr(o1.sgd->param_groups()[gi].options().get_lr());
  }
  ASSERT_TRUE((*s2)->LoadStateDict(ThroughTorchSave((*s1)->StateDict())).ok());
  PlateauRun r2;
  r2.k = r1.k;
  SetUpPlateau(r2, in, o2.sgd.get(), s2->get());
  ASSERT_TRUE(r2.trainer->LoadStateDict(r1.trainer->GetStateDict()).ok());
  ASSERT_TRUE(r2.trainer->Run(r2.data, {.max_epochs = PlateauEpochs(in)}).ok());
  json tail(r.rows.end() - static_cast<std::ptrdiff_t>(r2.rows.size()), r.rows.end());
  EXPECT_EQ(r2.rows, tail);
  EXPECT_EQ(r2.rows.size(), rex["rows_after_resume"].size());
  EXPECT_EQ(ToJson((*s2)->StateDict()), ToJson((*sched)->StateDict()));
}

TEST(ReduceLROnPlateauConformance, DocsSaveHistory) { CheckPlateauScenario("plateau_docs_save_history"); }
TEST(ReduceLROnPlateauConformance, MaxAbsCooldownResume) { CheckPlateauScenario("plateau_max_abs_cooldown_resume"); }
TEST(ReduceLROnPlateauConformance, MinLrIgnoredWithoutGroupIndex) {
  CheckPlateauScenario("plateau_min_lr_ignored_without_group_index");
}

TEST(ReduceLROnPlateauConformance, GroupIndexMinLr) {
  const json g = Golden("plateau_group_index_min_lr");
  for (const json& c : g["expected"]["cases"]) {
    SCOPED_TRACE(c.dump());
    Optim o = MakeOptimizer(g["inputs"]["optimizer"]);
    auto s = ReduceLROnPlateauScheduler::Create(
        *o.sgd, {.metric_name = "loss", .factor = 0.1, .patience = 0, .min_lr = 0.05,
                 .param_group_index = c["param_group_index"].get<int64_t>()});
    ASSERT_TRUE(s.ok()) << s.status();
    ExpectJsonNear(json((*s)->min_lrs()), c["min_lrs"], 0.0, "min_lrs");
    json lrs = json::array();
    for (int i = 0; i < 4; ++i) {
      (*s)->Step(1.0);
      lrs.push_back(
          {o.sgd->param_groups()[0].options().get_lr(), o.sgd->param_groups()[1].options().get_lr()});
    }
    ExpectJsonNear(lrs, c["lr_after_each_call"], 0.0, "lr_after_each_call");
  }
}

TEST(ReduceLROnPlateauConformance, SimulateValues) {
  const json g = Golden("plateau_simulate_values");
  auto v = ReduceLROnPlateauScheduler::Simulate(
      10, {1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.5, 0.6, 0.6, 0.6}, 0.1,
      {.metric_name = "metric", .mode = "min", .factor = 0.5, .patience = 1, .threshold = 0.05,
       .threshold_mode = "abs", .cooldown = 1});
  ASSERT_TRUE(v.ok()) << v.status();
  ExpectJsonNear(SimJson(*v), g["expected"]["values"], 0.0, "values");
}

TEST(ReduceLROnPlateauConformance, Errors) {
  const json g = Golden("plateau_errors");
  Optim o = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
  auto a = ReduceLROnPlateauScheduler::Create(*o.sgd, {.metric_name = "loss", .factor = 1.0});
  EXPECT_EQ(std::string(a.status().message()), Raised(g, 0));
  auto b = ReduceLROnPlateauScheduler::Create(*o.sgd, {.metric_name = "loss", .mode = "avg"});
  EXPECT_EQ(std::string(b.status().message()), Raised(g, 1));
  // The metric missing from the evaluator's metrics fails the run with ignite's message.
  auto c = ReduceLROnPlateauScheduler::Create(*o.sgd, {.metric_name = "loss"});
  ASSERT_TRUE(c.ok());
  Engine evaluator([](Engine& e, const int&) { e.state().metrics["acc"] = 1.0; });
  evaluator.On(Events::Completed(), **c);
  std::vector<int> val = {0};
  absl::Status run = evaluator.Run(val, {.max_epochs = 1});
  EXPECT_THAT(std::string(run.message()), HasSubstr(Raised(g, 2)));
  auto d = ReduceLROnPlateauScheduler::Simulate(3, {1.0, 2.0}, 0.1, {.metric_name = "metric"});
  EXPECT_EQ(std::string(d.status().message()), Raised(g, 3));
}

// Two ranks see different metrics; each steps with their mean (the firing's collective), so both
// hold the lr a single scheduler fed the means holds, although rank 0 alone would have seen an
// improvement at the second evaluation and kept its lr.
TEST(ReduceLROnPlateauWorld, RanksAgreeOnTheMeanMetric) {
  const std::vector<std::vector<double>> metrics = {{1.0, 0.5, 0.9, 0.9}, {1.0, 1.5, 0.9, 0.95}};
  const ReduceLROnPlateauOptions options{.metric_name = "loss", .factor = 0.5, .patience = 0};
  Optim ref = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
  auto ref_s = ReduceLROnPlateauScheduler::Create(*ref.sgd, options);
  ASSERT_TRUE(ref_s.ok());
  std::vector<double> ref_lrs;
  for (size_t k = 0; k < metrics[0].size(); ++k) {
    (*ref_s)->Step((metrics[0][k] + metrics[1][k]) / 2);
    ref_lrs.push_back(ref.sgd->param_groups()[0].options().get_lr());
  }
  Optim alone = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
  auto alone_s = ReduceLROnPlateauScheduler::Create(*alone.sgd, options);
  ASSERT_TRUE(alone_s.ok());
  (*alone_s)->Step(metrics[0][0]);
  (*alone_s)->Step(metrics[0][1]);
  ASSERT_NE(alone.sgd->param_groups()[0].options().get_lr(), ref_lrs[1]);

  dist::testing::FakeWorld world(2);
  std::vector<std::vector<double>> lrs(2);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    const int rank = c.rank();
    Optim o = MakeOptimizer({{"defaults", {{"lr", 0.1}}}, {"param_groups", {json::object()}}});
    auto s = ReduceLROnPlateauScheduler::Create(*o.sgd, options);
    ASSERT_TRUE(s.ok());
    size_t k = 0;
    Engine evaluator([&](Engine& e, const int&) { e.state().metrics["loss"] = metrics[rank][k]; });
    evaluator.set_communicator(&c);
    evaluator.On(Events::Completed(), **s);
    std::vector<int> val = {0};
    for (k = 0; k < metrics[rank].size(); ++k) {
      ASSERT_TRUE(evaluator.Run(val, {.max_epochs = 1}).ok());
      lrs[rank].push_back(o.sgd->param_groups()[0].options().get_lr());
    }
  });
  EXPECT_EQ(lrs[0], ref_lrs);
  EXPECT_EQ(lrs[1], ref_lrs);
}

// ---- Resume at every iteration ----------------------------------------------------------------
// A state_dict taken after any event, loaded into a fresh scheduler (with the optimizer's options
// restored) continues with the same values as the uninterrupted run, for a composition that
// holds every kind: warm-up (ConcatScheduler, ParamGroupScheduler, PiecewiseLinear, LRScheduler)
// then a cosine with cycle_mult and a linear one on momentum.
TEST(ParamSchedulerResume, EveryEventContinuesExactly) {
  const json opt_spec = {{"defaults", {{"lr", 0.1}, {"momentum", 0.9}}},
                         {"param_groups", {json::object(), {{"lr", 0.05}}}}};
  auto build = [](torch::optim::Optimizer& opt) {
    std::vector<std::unique_ptr<ParamScheduler>> v;
    v.push_back(Unwrap(CreateLrSchedulerWithWarmup(
        opt, TorchLrSchedule::MultiStepLR({3, 7}, 0.5),
        {.warmup_start_value = 0.0, .warmup_duration = 3})));
    v.push_back(Unwrap(CosineAnnealingScheduler::Create(
        opt, {.param_name = "weight_decay", .start_value = 0.01, .end_value = 0.0,
              .cycle_size = 3, .cycle_mult = 1.5, .start_value_mult = 0.9})));
    v.push_back(Unwrap(LinearCyclicalScheduler::Create(
        opt, {.param_name = "momentum", .start_value = 0.95, .end_value = 0.85, .cycle_size = 4,
              .param_group_index = 1})));
    return v;
  };
  const std::vector<std::string> names = {"lr", "momentum", "weight_decay"};
  constexpr int kEvents = 20;
  Optim ref = MakeOptimizer(opt_spec);
  auto ref_s = build(*ref.sgd);
  std::vector<json> reference;
  for (int i = 0; i < kEvents; ++i) {
    for (auto& s : ref_s) s->Step();
    reference.push_back(Groups(*ref.sgd, names));
  }
  for (int cut = 0; cut < kEvents; ++cut) {
    SCOPED_TRACE(cut);
    Optim a = MakeOptimizer(opt_spec);
    auto sa = build(*a.sgd);
    for (int i = 0; i < cut; ++i) {
      for (auto& s : sa) s->Step();
    }
    Optim b = MakeOptimizer(opt_spec);
    auto sb = build(*b.sgd);
    for (size_t g = 0; g < 2; ++g) {
      for (const std::string& n : names) {
        ASSERT_TRUE(SetParamGroupOption(*b.sgd, g, n, *GetParamGroupOption(*a.sgd, g, n)).ok());
      }
    }
    for (size_t k = 0; k < sa.size(); ++k) {
      absl::Status s = sb[k]->LoadStateDict(sa[k]->StateDict());
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_EQ(sb[k]->StateDict(), sa[k]->StateDict());
    }
    for (int i = cut; i < kEvents; ++i) {
      for (auto& s : sb) s->Step();
      ASSERT_EQ(Groups(*b.sgd, names), reference[static_cast<size_t>(i)]) << "event " << i;
    }
  }
}

}  // namespace
}  // namespace ember

// The label enters the layout the ranks agree on at the start of a run (see EarlyStopping's).
TEST(ReduceLROnPlateauLabel, NamesTheNonDefaultOptions) {
  torch::nn::Linear net(2, 1);
  torch::optim::SGD sgd(net->parameters(), 0.1);
  auto plain = ember::ReduceLROnPlateauScheduler::Create(sgd, {.metric_name = "loss"});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*plain)->label(), "metric=loss");
  auto tuned = ember::ReduceLROnPlateauScheduler::Create(
      sgd, {.metric_name = "acc", .mode = "max", .factor = 0.5, .patience = 3, .threshold = 0.01,
            .threshold_mode = "abs", .cooldown = 2, .min_lr = 1e-5, .eps = 1e-9, .param_group_index = 0});
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  EXPECT_EQ((*tuned)->label(),
            "metric=acc, mode=max, factor=0.5, patience=3, threshold=0.01, threshold_mode=abs, cooldown=2, "
            "min_lr=1e-05, eps=1e-09, param_group_index=0");
}
