#include "handlers/param_scheduler.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/settings_agreement.h"

namespace ember {
namespace {

using torch::optim::OptimizerOptions;

// ---- Param-group options ----------------------------------------------------------------------
struct OptionAccess {
  const char* name;
  double (*get)(const OptimizerOptions&);
  void (*set)(OptimizerOptions&, double);
};

#define EMBER_OPTION(T, n)                                                        \
  OptionAccess {                                                                  \
    #n, [](const OptimizerOptions& o) { return static_cast<const T&>(o).n(); },   \
        [](OptimizerOptions& o, double v) { static_cast<T&>(o).n(v); }            \
  }

struct OptimizerKind {
  const char* type;
  std::vector<OptionAccess> options;
};

const OptimizerKind* KindOf(const OptimizerOptions& o) {
  using namespace torch::optim;  // NOLINT
  static const OptimizerKind kSgd{"SGD",
                                  {EMBER_OPTION(SGDOptions, lr), EMBER_OPTION(SGDOptions, momentum),
                                   EMBER_OPTION(SGDOptions, dampening),
                                   EMBER_OPTION(SGDOptions, weight_decay)}};
  static const OptimizerKind kAdam{"Adam",
                                   {EMBER_OPTION(AdamOptions, lr), EMBER_OPTION(AdamOptions, eps),
                                    EMBER_OPTION(AdamOptions, weight_decay)}};
  static const OptimizerKind kAdamW{
      "AdamW",
      {EMBER_OPTION(AdamWOptions, lr), EMBER_OPTION(AdamWOptions, eps),
       EMBER_OPTION(AdamWOptions, weight_decay)}};
  static const OptimizerKind kAdagrad{
      "Adagrad",
      {EMBER_OPTION(AdagradOptions, lr), EMBER_OPTION(AdagradOptions, lr_decay),
       EMBER_OPTION(AdagradOptions, weight_decay),
       EMBER_OPTION(AdagradOptions, initial_accumulator_value), EMBER_OPTION(AdagradOptions, eps)}};
  static const OptimizerKind kRmsprop{
      "RMSprop",
      {EMBER_OPTION(RMSpropOptions, lr), EMBER_OPTION(RMSpropOptions, alpha),
       EMBER_OPTION(RMSpropOptions, eps), EMBER_OPTION(RMSpropOptions, weight_decay),
       EMBER_OPTION(RMSpropOptions, momentum)}};
  static const OptimizerKind kLbfgs{"LBFGS", {EMBER_OPTION(LBFGSOptions, lr)}};
  if (dynamic_cast<const SGDOptions*>(&o)) return &kSgd;
  if (dynamic_cast<const AdamWOptions*>(&o)) return &kAdamW;
  if (dynamic_cast<const AdamOptions*>(&o)) return &kAdam;
  if (dynamic_cast<const AdagradOptions*>(&o)) return &kAdagrad;
  if (dynamic_cast<const RMSpropOptions*>(&o)) return &kRmsprop;
  if (dynamic_cast<const LBFGSOptions*>(&o)) return &kLbfgs;
  return nullptr;
}
#undef EMBER_OPTION

absl::StatusOr<const OptionAccess*> FindOption(const torch::optim::Optimizer& optimizer,
                                               size_t group, const std::string& name) {
  if (group >= optimizer.param_groups().size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("param_group_index ", group, " is out of range: the optimizer has ",
                     optimizer.param_groups().size(), " param groups"));
  }
  const OptimizerKind* kind = KindOf(optimizer.param_groups()[group].options());
  if (kind == nullptr) {
    return absl::InvalidArgumentError(
        "the optimizer's type is not one the parameter schedulers support (SGD, Adam, AdamW, "
        "Adagrad, RMSprop, LBFGS)");
  }
  for (const OptionAccess& a : kind->options) {
    if (name == a.name) return &a;  // the per-event path: no allocation
  }
  std::vector<std::string> allowed;
  for (const OptionAccess& a : kind->options) allowed.push_back(a.name);
  return absl::InvalidArgumentError(absl::StrCat("param_name '", name,
                                                 "' is not a schedulable option of ", kind->type,
                                                 "'s param groups; allowed: ",
                                                 absl::StrJoin(allowed, ", ")));
}

absl::Status Absent(const std::string& key, const Value& state) {
  std::vector<std::string> keys;
  for (const Value& k : state.keys()) keys.push_back(k.is_string() ? k.as_string() : "?");
  return absl::InvalidArgumentError(
      absl::StrCat("Required state attribute '", key,
                   "' is absent in provided state_dict '[", absl::StrJoin(keys, ", "), "]'"));
}

absl::StatusOr<const Value*> Need(const Value& state, const std::string& key) {
  if (!state.is_dict()) return absl::InvalidArgumentError("state_dict should be a dict");
  const Value* v = state.Find(Value(key));
  if (v == nullptr) return Absent(key, state);
  return v;
}

#define EMBER_PS_ASSIGN(lhs, expr)                 \
  do {                                             \
    auto ember_ps_r = (expr);                      \
    if (!ember_ps_r.ok()) return ember_ps_r.status(); \
    lhs = *ember_ps_r;                             \
  } while (0)

absl::StatusOr<double> NeedDouble(const Value& state, const std::string& key) {
  const Value* v;
  EMBER_PS_ASSIGN(v, Need(state, key));
  return v->ToDouble(key);
}

absl::StatusOr<int64_t> NeedInt(const Value& state, const std::string& key) {
  const Value* v;
  EMBER_PS_ASSIGN(v, Need(state, key));
  return v->ToInt(key);
}

Value DoubleList(const std::vector<double>& v) {
  Value list = Value::List();
  for (double d : v) list.Append(d);
  return list;
}

absl::StatusOr<std::vector<double>> NeedDoubleList(const Value& state, const std::string& key) {
  const Value* v;
  EMBER_PS_ASSIGN(v, Need(state, key));
  if (!v->is_sequence()) return absl::InvalidArgumentError(absl::StrCat(key, " should be a list"));
  std::vector<double> out;
  for (size_t i = 0; i < v->items().size(); ++i) {
    double d;
    EMBER_PS_ASSIGN(d, v->items()[i].ToDouble(absl::StrCat(key, "[", i, "]")));
    out.push_back(d);
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> NeedIntList(const Value& state, const std::string& key) {
  const Value* v;
  EMBER_PS_ASSIGN(v, Need(state, key));
  if (!v->is_sequence()) return absl::InvalidArgumentError(absl::StrCat(key, " should be a list"));
  std::vector<int64_t> out;
  for (size_t i = 0; i < v->items().size(); ++i) {
    int64_t d;
    EMBER_PS_ASSIGN(d, v->items()[i].ToInt(absl::StrCat(key, "[", i, "]")));
    out.push_back(d);
  }
  return out;
}

// Every schedulable option of every group, to restore after a simulation.
std::vector<std::vector<double>> SnapshotOptions(const torch::optim::Optimizer& optimizer) {
  std::vector<std::vector<double>> out;
  for (const auto& group : optimizer.param_groups()) {
    std::vector<double> values;
    if (const OptimizerKind* kind = KindOf(group.options())) {
      for (const OptionAccess& a : kind->options) values.push_back(a.get(group.options()));
    }
    out.push_back(std::move(values));
  }
  return out;
}

void RestoreOptions(torch::optim::Optimizer& optimizer,
                    const std::vector<std::vector<double>>& snapshot) {
  for (size_t g = 0; g < snapshot.size() && g < optimizer.param_groups().size(); ++g) {
    auto& options = optimizer.param_groups()[g].options();
    if (const OptimizerKind* kind = KindOf(options)) {
      for (size_t i = 0; i < kind->options.size() && i < snapshot[g].size(); ++i) {
        kind->options[i].set(options, snapshot[g][i]);
      }
    }
  }
}

// An internal SGD(lr=0.01) over one zero parameter (ignite's simulate_values classmethod).
struct SimOptimizer {
  SimOptimizer()
      : param(torch::zeros({1})), sgd(std::vector<torch::Tensor>{param}, torch::optim::SGDOptions(0.01)) {}
  torch::Tensor param;
  torch::optim::SGD sgd;
};

}  // namespace

// ---- Param-group options ----------------------------------------------------------------------
std::vector<std::string> SchedulableOptionNames(const torch::optim::Optimizer& optimizer) {
  std::vector<std::string> names;
  if (optimizer.param_groups().empty()) return names;
  if (const OptimizerKind* kind = KindOf(optimizer.param_groups()[0].options())) {
    for (const OptionAccess& a : kind->options) names.push_back(a.name);
  }
  return names;
}

absl::StatusOr<double> GetParamGroupOption(const torch::optim::Optimizer& optimizer, size_t group,
                                           const std::string& name) {
  const OptionAccess* access;
  EMBER_PS_ASSIGN(access, FindOption(optimizer, group, name));
  return access->get(optimizer.param_groups()[group].options());
}

absl::Status SetParamGroupOption(torch::optim::Optimizer& optimizer, size_t group,
                                 const std::string& name, double value) {
  const OptionAccess* access;
  EMBER_PS_ASSIGN(access, FindOption(optimizer, group, name));
  access->set(optimizer.param_groups()[group].options(), value);
  return absl::OkStatus();
}

// ---- ParamScheduler ---------------------------------------------------------------------------
ParamScheduler::ParamScheduler(torch::optim::Optimizer& optimizer, std::string param_name,
                               bool save_history, std::optional<int64_t> param_group_index)
    : optimizer_(&optimizer),
      param_name_(std::move(param_name)),
      save_history_(save_history),
      param_group_index_(param_group_index) {}

absl::Status ParamScheduler::Validate(const torch::optim::Optimizer& optimizer,
                                      const std::string& param_name,
                                      std::optional<int64_t> param_group_index) {
  if (param_group_index && *param_group_index < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("param_group_index should be >= 0, but given ", *param_group_index));
  }
  const size_t groups = optimizer.param_groups().size();
  if (groups == 0) return absl::InvalidArgumentError("the optimizer has no param groups");
  if (param_group_index) return FindOption(optimizer, *param_group_index, param_name).status();
  for (size_t g = 0; g < groups; ++g) {
    absl::Status s = FindOption(optimizer, g, param_name).status();
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

std::vector<size_t> ParamScheduler::group_indices() const {
  if (param_group_index_) return {static_cast<size_t>(*param_group_index_)};
  std::vector<size_t> all(optimizer_->param_groups().size());
  for (size_t g = 0; g < all.size(); ++g) all[g] = g;
  return all;
}

void ParamScheduler::operator()(Engine& engine) {
  (void)engine;
  Call(&history_, nullptr);
}

void ParamScheduler::Step() { Call(nullptr, nullptr); }

std::vector<double> ParamScheduler::GetParam() {
  std::vector<double> values;
  FillParam(values);
  return values;
}

void ParamScheduler::Call(ParamHistory* history, const std::string* name) {
  // The values land in a buffer the scheduler keeps: an event allocates nothing (engine_benchmark).
  FillParam(param_values_);
  Apply(param_values_, history, name);
}

void ParamScheduler::Apply(const std::vector<double>& values, ParamHistory* history,
                           const std::string* name) {
  // The targeted groups, {param_group_index} or all, without a vector of their indices.
  const size_t first = param_group_index_ ? static_cast<size_t>(*param_group_index_) : 0;
  const size_t count = param_group_index_ ? 1 : optimizer_->param_groups().size();
  for (size_t i = 0; i < count; ++i) {
    const double v = values.size() == 1 ? values[0] : values.at(i);
    // Validated at Create: the name is an option of every targeted group.
    (void)SetParamGroupOption(*optimizer_, first + i, param_name_, v);
  }
  if (save_history_ && history != nullptr) {
    std::vector<double> recorded;
    for (size_t i = 0; i < count; ++i) {
      recorded.push_back(*GetParamGroupOption(*optimizer_, first + i, param_name_));
    }
    (*history)[name ? *name : param_name_].push_back(std::move(recorded));
  }
  ++event_index_;
}

Value ParamScheduler::StateDict() const {
  Value state = Value::Dict(/*ordered=*/true);
  state.Set("event_index", event_index_);
  state.Set("param_name", param_name_);
  state.Set("save_history", save_history_);
  state.Set("param_group_index", param_group_index_ ? Value(*param_group_index_) : Value());
  AppendState(state);
  return state;
}

absl::Status ParamScheduler::LoadStateDict(const Value& state) {
  int64_t event_index;
  EMBER_PS_ASSIGN(event_index, NeedInt(state, "event_index"));
  const Value* name;
  EMBER_PS_ASSIGN(name, Need(state, "param_name"));
  std::string param_name;
  EMBER_PS_ASSIGN(param_name, name->ToString("param_name"));
  if (param_name != param_name_) {
    return absl::InvalidArgumentError(absl::StrCat("the state_dict is of a scheduler of '",
                                                   param_name, "', this one schedules '",
                                                   param_name_, "'"));
  }
  const Value* save;
  EMBER_PS_ASSIGN(save, Need(state, "save_history"));
  bool save_history;
  EMBER_PS_ASSIGN(save_history, save->ToBool("save_history"));
  const Value* group;
  EMBER_PS_ASSIGN(group, Need(state, "param_group_index"));
  std::optional<int64_t> group_index;
  if (!group->is_none()) EMBER_PS_ASSIGN(group_index, group->ToInt("param_group_index"));
  if (group_index != param_group_index_) {
    auto str = [](std::optional<int64_t> g) { return g ? absl::StrCat(*g) : std::string("None"); };
    return absl::InvalidArgumentError(absl::StrCat(
        "the state_dict is of a scheduler of param_group_index ", str(group_index),
        ", this one has param_group_index ", str(param_group_index_)));
  }
  absl::Status own = LoadOwnState(state);
  if (!own.ok()) return own;
  event_index_ = event_index;
  save_history_ = save_history;
  return absl::OkStatus();
}

absl::StatusOr<SimulatedValues> ParamScheduler::SimulateValues(
    int64_t num_events, std::vector<std::string> param_names) {
  if (param_names.empty()) param_names = {param_name_};
  const std::vector<size_t> groups = group_indices();
  for (const std::string& n : param_names) {
    for (size_t g : groups) EMBER_PS_ASSIGN(std::ignore, GetParamGroupOption(*optimizer_, g, n));
  }
  const Value saved_state = StateDict();
  const auto saved_options = SnapshotOptions(*optimizer_);
  SimulatedValues out;
  for (int64_t i = 0; i < num_events; ++i) {
    Step();
    std::vector<double> values;
    for (const std::string& n : param_names) {
      for (size_t g : groups) values.push_back(*GetParamGroupOption(*optimizer_, g, n));
    }
    out.emplace_back(i, std::move(values));
  }
  absl::Status restored = LoadStateDict(saved_state);
  RestoreOptions(*optimizer_, saved_options);
  if (!restored.ok()) return restored;
  return out;
}

// ---- CyclicalScheduler ------------------------------------------------------------------------
CyclicalScheduler::CyclicalScheduler(torch::optim::Optimizer& optimizer,
                                     const CyclicalSchedulerOptions& o)
    : ParamScheduler(optimizer, o.param_name, o.save_history, o.param_group_index),
      start_value_(o.start_value),
      end_value_(o.end_value),
      cycle_size_(o.cycle_size),
      cycle_mult_(o.cycle_mult),
      start_value_mult_(o.start_value_mult),
      end_value_mult_(o.end_value_mult),
      warmup_duration_(o.warmup_duration),
      total_cycle_size_(o.warmup_duration + o.cycle_size) {}

absl::Status CyclicalScheduler::ValidateCyclical(const torch::optim::Optimizer& optimizer,
                                                 const CyclicalSchedulerOptions& o) {
  absl::Status s = Validate(optimizer, o.param_name, o.param_group_index);
  if (!s.ok()) return s;
  if (o.cycle_size < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument cycle_size should be positive and larger than 1, but given ", o.cycle_size));
  }
  if (o.warmup_duration < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Argument warmup_duration should be >= 0, but given ", o.warmup_duration));
  }
  if (!(o.cycle_mult > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Argument cycle_mult should be positive, but given ", o.cycle_mult));
  }
  return absl::OkStatus();
}

void CyclicalScheduler::Call(ParamHistory* history, const std::string* name) {
  if (event_index_ != 0 && event_index_ == cycle_size_) start_value_ *= start_value_mult_;
  if (event_index_ != 0 && event_index_ == total_cycle_size_) {
    event_index_ = 0;
    cycle_size_ = static_cast<int64_t>(static_cast<double>(cycle_size_) * cycle_mult_);
    warmup_duration_ = static_cast<int64_t>(static_cast<double>(warmup_duration_) * cycle_mult_);
    total_cycle_size_ = warmup_duration_ + cycle_size_;
    ++cycle_;
    end_value_ *= end_value_mult_;
  }
  ParamScheduler::Call(history, name);
}

void CyclicalScheduler::FillParam(std::vector<double>& out) {
  if (warmup_duration_ > 0 && event_index_ >= cycle_size_) {
    const double progress = static_cast<double>(event_index_ - cycle_size_) /
                            static_cast<double>(warmup_duration_);
    out.assign(1, end_value_ + (start_value_ - end_value_) * progress);
    return;
  }
  out.assign(1, CycleParam());
}

void CyclicalScheduler::AppendState(Value& state) const {
  state.Set("start_value", start_value_);
  state.Set("end_value", end_value_);
  state.Set("cycle_size", cycle_size_);
  state.Set("cycle_mult", cycle_mult_);
  state.Set("cycle", cycle_);
  state.Set("start_value_mult", start_value_mult_);
  state.Set("end_value_mult", end_value_mult_);
  state.Set("warmup_duration", warmup_duration_);
  state.Set("total_cycle_size", total_cycle_size_);
}

absl::Status CyclicalScheduler::LoadOwnState(const Value& state) {
  double start, end, cmult, smult, emult;
  int64_t size, cycle, warmup, total;
  EMBER_PS_ASSIGN(start, NeedDouble(state, "start_value"));
  EMBER_PS_ASSIGN(end, NeedDouble(state, "end_value"));
  EMBER_PS_ASSIGN(size, NeedInt(state, "cycle_size"));
  EMBER_PS_ASSIGN(cmult, NeedDouble(state, "cycle_mult"));
  EMBER_PS_ASSIGN(cycle, NeedInt(state, "cycle"));
  EMBER_PS_ASSIGN(smult, NeedDouble(state, "start_value_mult"));
  EMBER_PS_ASSIGN(emult, NeedDouble(state, "end_value_mult"));
  EMBER_PS_ASSIGN(warmup, NeedInt(state, "warmup_duration"));
  EMBER_PS_ASSIGN(total, NeedInt(state, "total_cycle_size"));
  if (size < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("state_dict cycle_size should be larger than 1, but given ", size));
  }
  start_value_ = start;
  end_value_ = end;
  cycle_size_ = size;
  cycle_mult_ = cmult;
  cycle_ = cycle;
  start_value_mult_ = smult;
  end_value_mult_ = emult;
  warmup_duration_ = warmup;
  total_cycle_size_ = total;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LinearCyclicalScheduler>> LinearCyclicalScheduler::Create(
    torch::optim::Optimizer& optimizer, CyclicalSchedulerOptions options) {
  absl::Status s = ValidateCyclical(optimizer, options);
  if (!s.ok()) return s;
  if (options.warmup_duration > 0 && !options.monotonic) {
    return absl::InvalidArgumentError(
        "Invalid combination when warmup_duration > 0 and monotonic=False, please use either set "
        "warmup_duration=0 or monotonic=True");
  }
  return std::unique_ptr<LinearCyclicalScheduler>(new LinearCyclicalScheduler(optimizer, options));
}

double LinearCyclicalScheduler::CycleParam() const {
  const double progress = static_cast<double>(event_index_) / static_cast<double>(cycle_size_);
  if (monotonic_) return start_value_ + (end_value_ - start_value_) * progress;
  return end_value_ + (start_value_ - end_value_) * std::abs(progress - 0.5) * 2;
}

absl::StatusOr<std::unique_ptr<CosineAnnealingScheduler>> CosineAnnealingScheduler::Create(
    torch::optim::Optimizer& optimizer, CyclicalSchedulerOptions options) {
  absl::Status s = ValidateCyclical(optimizer, options);
  if (!s.ok()) return s;
  if (options.monotonic) {
    return absl::InvalidArgumentError("monotonic is an option of LinearCyclicalScheduler only");
  }
  return std::unique_ptr<CosineAnnealingScheduler>(
      new CosineAnnealingScheduler(optimizer, options));
}

double CosineAnnealingScheduler::CycleParam() const {
  const double progress = static_cast<double>(event_index_) / static_cast<double>(cycle_size_);
  return start_value_ + ((end_value_ - start_value_) / 2) * (1 - std::cos(M_PI * progress));
}

namespace {
template <typename S, typename O>
absl::StatusOr<SimulatedValues> SimulateOnSgd(int64_t num_events, O options) {
  SimOptimizer sim;
  options.save_history = false;
  auto scheduler = S::Create(sim.sgd, std::move(options));
  if (!scheduler.ok()) return scheduler.status();
  SimulatedValues out;
  for (int64_t i = 0; i < num_events; ++i) {
    (*scheduler)->Step();
    out.emplace_back(i, std::vector<double>{
                            *GetParamGroupOption(sim.sgd, 0, (*scheduler)->param_name())});
  }
  return out;
}
}  // namespace

absl::StatusOr<SimulatedValues> LinearCyclicalScheduler::Simulate(
    int64_t num_events, CyclicalSchedulerOptions options) {
  return SimulateOnSgd<LinearCyclicalScheduler>(num_events, std::move(options));
}

absl::StatusOr<SimulatedValues> CosineAnnealingScheduler::Simulate(
    int64_t num_events, CyclicalSchedulerOptions options) {
  return SimulateOnSgd<CosineAnnealingScheduler>(num_events, std::move(options));
}

// ---- PiecewiseLinear --------------------------------------------------------------------------
PiecewiseLinear::PiecewiseLinear(torch::optim::Optimizer& optimizer,
                                 const PiecewiseLinearOptions& o)
    : ParamScheduler(optimizer, o.param_name, o.save_history, o.param_group_index) {
  for (const auto& [milestone, value] : o.milestones_values) {
    milestones_.push_back(milestone);
    values_.push_back(value);
  }
}

absl::StatusOr<std::unique_ptr<PiecewiseLinear>> PiecewiseLinear::Create(
    torch::optim::Optimizer& optimizer, PiecewiseLinearOptions options) {
  absl::Status s = Validate(optimizer, options.param_name, options.param_group_index);
  if (!s.ok()) return s;
  if (options.milestones_values.empty()) {
    return absl::InvalidArgumentError(
        "Argument milestones_values should be with at least one value, but given []");
  }
  for (size_t i = 1; i < options.milestones_values.size(); ++i) {
    if (options.milestones_values[i].first < options.milestones_values[i - 1].first) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Milestones should be increasing integers, but given ",
          options.milestones_values[i].first, " is smaller than the previous milestone ",
          options.milestones_values[i - 1].first));
    }
  }
  return std::unique_ptr<PiecewiseLinear>(new PiecewiseLinear(optimizer, options));
}

absl::StatusOr<SimulatedValues> PiecewiseLinear::Simulate(int64_t num_events,
                                                          PiecewiseLinearOptions options) {
  return SimulateOnSgd<PiecewiseLinear>(num_events, std::move(options));
}

void PiecewiseLinear::FillParam(std::vector<double>& out) {
  // ignite's _get_start_end, advancing _index as the events pass the milestones.
  int64_t start_index, end_index;
  double start_value, end_value;
  for (;;) {
    if (milestones_.front() > event_index_) {
      start_index = event_index_ - 1;
      end_index = event_index_;
      start_value = end_value = values_.front();
      break;
    }
    if (milestones_.back() <= event_index_) {
      start_index = event_index_;
      end_index = event_index_ + 1;
      start_value = end_value = values_.back();
      break;
    }
    const size_t i = static_cast<size_t>(index_);
    if (i + 1 < milestones_.size() && milestones_[i] <= event_index_ &&
        event_index_ < milestones_[i + 1]) {
      start_index = milestones_[i];
      end_index = milestones_[i + 1];
      start_value = values_[i];
      end_value = values_[i + 1];
      break;
    }
    ++index_;
  }
  out.assign(1, start_value + (end_value - start_value) * static_cast<double>(event_index_ - start_index) /
                            static_cast<double>(end_index - start_index));
}

void PiecewiseLinear::AppendState(Value& state) const {
  state.Set("values", DoubleList(values_));
  Value milestones = Value::List();
  for (int64_t m : milestones_) milestones.Append(m);
  state.Set("milestones", std::move(milestones));
  state.Set("_index", index_);
}

absl::Status PiecewiseLinear::LoadOwnState(const Value& state) {
  std::vector<double> values;
  std::vector<int64_t> milestones;
  int64_t index;
  EMBER_PS_ASSIGN(values, NeedDoubleList(state, "values"));
  EMBER_PS_ASSIGN(milestones, NeedIntList(state, "milestones"));
  EMBER_PS_ASSIGN(index, NeedInt(state, "_index"));
  if (values.empty() || values.size() != milestones.size() || index < 0 ||
      static_cast<size_t>(index) >= values.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("state_dict of PiecewiseLinear is inconsistent: ", values.size(),
                     " values, ", milestones.size(), " milestones, _index ", index));
  }
  values_ = std::move(values);
  milestones_ = std::move(milestones);
  index_ = index;
  return absl::OkStatus();
}

// ---- ParamGroupScheduler ----------------------------------------------------------------------
ParamGroupScheduler::ParamGroupScheduler(std::vector<std::unique_ptr<ParamScheduler>> schedulers,
                                         std::vector<std::string> names, bool save_history)
    : ParamScheduler(schedulers.front()->optimizer(), schedulers.front()->param_name(),
                     save_history, std::nullopt),
      schedulers_(std::move(schedulers)),
      names_(std::move(names)) {
  set_save_history(save_history);
}

absl::StatusOr<std::unique_ptr<ParamGroupScheduler>> ParamGroupScheduler::Create(
    std::vector<std::unique_ptr<ParamScheduler>> schedulers, std::vector<std::string> names,
    bool save_history) {
  if (schedulers.empty()) {
    return absl::InvalidArgumentError(
        "Argument schedulers should be a list/tuple of parameter schedulers, but given []");
  }
  for (size_t i = 0; i < schedulers.size(); ++i) {
    if (schedulers[i] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Argument schedulers should be a list/tuple of parameter schedulers, but given a null "
          "scheduler at index ",
          i));
    }
  }
  if (names.empty()) {
    for (const auto& s : schedulers) names.push_back(s->param_name());
  }
  if (names.size() != schedulers.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(schedulers.size(), " should be equal ", names.size()));
  }
  return std::unique_ptr<ParamGroupScheduler>(
      new ParamGroupScheduler(std::move(schedulers), std::move(names), save_history));
}

void ParamGroupScheduler::set_save_history(bool on) {
  save_history_ = on;
  for (auto& s : schedulers_) s->set_save_history(on);
}

void ParamGroupScheduler::FillParam(std::vector<double>& out) {
  out.clear();
  for (auto& s : schedulers_) {
    std::vector<double> v = s->GetParam();
    out.insert(out.end(), v.begin(), v.end());
  }
}

void ParamGroupScheduler::Call(ParamHistory* history, const std::string* name) {
  (void)name;
  for (size_t i = 0; i < schedulers_.size(); ++i) schedulers_[i]->Call(history, &names_[i]);
}

Value ParamGroupScheduler::StateDict() const {
  Value state = Value::Dict(/*ordered=*/true);
  Value list = Value::List();
  for (size_t i = 0; i < schedulers_.size(); ++i) {
    list.Append(Value::Tuple({Value(names_[i]), schedulers_[i]->StateDict()}));
  }
  state.Set("schedulers", std::move(list));
  return state;
}

absl::Status ParamGroupScheduler::LoadStateDict(const Value& state) {
  const Value* sds;
  EMBER_PS_ASSIGN(sds, Need(state, "schedulers"));
  if (!sds->is_sequence() || sds->items().size() != schedulers_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Input state_dict contains ", sds->is_sequence() ? sds->items().size() : 0,
        " state_dicts of param group schedulers, but ", schedulers_.size(), " needed"));
  }
  for (size_t i = 0; i < schedulers_.size(); ++i) {
    const Value& entry = sds->items()[i];
    if (!entry.is_sequence() || entry.items().size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("schedulers[", i, "] should be a (name, state_dict) pair"));
    }
    std::string n;
    EMBER_PS_ASSIGN(n, entry.items()[0].ToString(absl::StrCat("schedulers[", i, "][0]")));
    if (n != names_[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat("Name of scheduler from input state dict does not correspond to required "
                       "one, ",
                       n, " vs ", names_[i]));
    }
  }
  for (size_t i = 0; i < schedulers_.size(); ++i) {
    absl::Status s = schedulers_[i]->LoadStateDict(sds->items()[i].items()[1]);
    if (!s.ok()) return s;
  }
  save_history_ = schedulers_.front()->save_history();
  return absl::OkStatus();
}

absl::StatusOr<SimulatedValues> ParamGroupScheduler::SimulateGroupValues(int64_t num_events) {
  const Value saved_state = StateDict();
  const auto saved_options = SnapshotOptions(*optimizer_);
  SimulatedValues out;
  for (int64_t i = 0; i < num_events; ++i) {
    out.emplace_back(i, GetParam());
    Step();
  }
  absl::Status restored = LoadStateDict(saved_state);
  RestoreOptions(*optimizer_, saved_options);
  if (!restored.ok()) return restored;
  return out;
}

// ---- ConcatScheduler --------------------------------------------------------------------------
ConcatScheduler::ConcatScheduler(std::vector<std::unique_ptr<ParamScheduler>> schedulers,
                                 std::vector<int64_t> durations, bool save_history)
    : ParamScheduler(schedulers.front()->optimizer(), schedulers.front()->param_name(),
                     save_history, std::nullopt),
      schedulers_(std::move(schedulers)),
      durations_(std::move(durations)) {
  set_save_history(save_history);
  SetupScheduler();
}

absl::StatusOr<std::unique_ptr<ConcatScheduler>> ConcatScheduler::Create(
    std::vector<std::unique_ptr<ParamScheduler>> schedulers, std::vector<int64_t> durations,
    bool save_history) {
  for (size_t i = 0; i < schedulers.size(); ++i) {
    if (schedulers[i] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("Argument schedulers should be a sequence of parameter schedulers, but "
                       "given a null scheduler at index ",
                       i));
    }
  }
  if (schedulers.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument schedulers should be of more than one parameter schedulers, but given ",
        schedulers.size()));
  }
  for (int64_t d : durations) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Argument durations should be list/tuple of integers, but given [",
                       absl::StrJoin(durations, ", "), "]"));
    }
  }
  if (schedulers.size() != durations.size() + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Incorrect number schedulers or duration values, given ", schedulers.size(),
                     " and ", durations.size()));
  }
  for (const auto& s : schedulers) {
    if (s->param_name() != schedulers.front()->param_name()) {
      return absl::InvalidArgumentError("schedulers should be related to same param_name");
    }
  }
  for (const auto& s : schedulers) {
    if (&s->optimizer() != &schedulers.front()->optimizer()) {
      return absl::InvalidArgumentError("schedulers should be related to same optimizer");
    }
  }
  return std::unique_ptr<ConcatScheduler>(
      new ConcatScheduler(std::move(schedulers), std::move(durations), save_history));
}

void ConcatScheduler::set_save_history(bool on) {
  save_history_ = on;
  for (auto& s : schedulers_) s->set_save_history(on);
}

void ConcatScheduler::SetupScheduler() {
  current_duration_ = scheduler_index_ < static_cast<int64_t>(durations_.size())
                          ? durations_[static_cast<size_t>(scheduler_index_)]
                          : -1;
}

void ConcatScheduler::FillParam(std::vector<double>& out) {
  schedulers_[static_cast<size_t>(scheduler_index_)]->FillParam(out);
}

void ConcatScheduler::Call(ParamHistory* history, const std::string* name) {
  if (current_duration_ == 0) {
    ++scheduler_index_;
    SetupScheduler();
  }
  schedulers_[static_cast<size_t>(scheduler_index_)]->Call(history, name);
  --current_duration_;
}

void ConcatScheduler::AppendState(Value& state) const {
  state.Set("_current_duration", current_duration_);
  Value durations = Value::List();
  for (int64_t d : durations_) durations.Append(d);
  state.Set("durations", std::move(durations));
  state.Set("_scheduler_index", scheduler_index_);
  Value list = Value::List();
  for (const auto& s : schedulers_) list.Append(s->StateDict());
  state.Set("schedulers", std::move(list));
}

absl::Status ConcatScheduler::LoadOwnState(const Value& state) {
  const Value* sds;
  EMBER_PS_ASSIGN(sds, Need(state, "schedulers"));
  if (!sds->is_sequence() || sds->items().size() != schedulers_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Input state_dict contains ", sds->is_sequence() ? sds->items().size() : 0,
        " state_dicts of concatenated schedulers, but ", schedulers_.size(), " needed"));
  }
  int64_t current_duration, scheduler_index;
  std::vector<int64_t> durations;
  EMBER_PS_ASSIGN(current_duration, NeedInt(state, "_current_duration"));
  EMBER_PS_ASSIGN(durations, NeedIntList(state, "durations"));
  EMBER_PS_ASSIGN(scheduler_index, NeedInt(state, "_scheduler_index"));
  if (durations.size() + 1 != schedulers_.size() || scheduler_index < 0 ||
      static_cast<size_t>(scheduler_index) >= schedulers_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "state_dict of ConcatScheduler is inconsistent: ", durations.size(), " durations for ",
        schedulers_.size(), " schedulers, _scheduler_index ", scheduler_index));
  }
  for (size_t i = 0; i < schedulers_.size(); ++i) {
    absl::Status s = schedulers_[i]->LoadStateDict(sds->items()[i]);
    if (!s.ok()) return s;
  }
  durations_ = std::move(durations);
  scheduler_index_ = scheduler_index;
  // Kept as saved (not reset from durations): the run continues where it was cut.
  current_duration_ = current_duration;
  return absl::OkStatus();
}

// ---- TorchLrSchedule --------------------------------------------------------------------------
namespace {

class StepLrSchedule : public TorchLrSchedule {
 public:
  StepLrSchedule(int64_t step_size, double gamma) : step_size_(step_size), gamma_(gamma) {}
  std::string name() const override { return "StepLR"; }
  double GetLr(int64_t last_epoch, double lr, double) const override {
    if (last_epoch == 0 || last_epoch % step_size_ != 0) return lr;
    return lr * gamma_;
  }
  void AppendLeadingState(Value& state) const override {
    state.Set("step_size", step_size_);
    state.Set("gamma", gamma_);
  }
  absl::Status LoadState(const Value& state) override {
    int64_t step_size;
    EMBER_PS_ASSIGN(step_size, NeedInt(state, "step_size"));
    EMBER_PS_ASSIGN(gamma_, NeedDouble(state, "gamma"));
    if (step_size < 1) return absl::InvalidArgumentError("StepLR step_size should be >= 1");
    step_size_ = step_size;
    return absl::OkStatus();
  }

 private:
  int64_t step_size_;
  double gamma_;
};

class ExponentialLrSchedule : public TorchLrSchedule {
 public:
  explicit ExponentialLrSchedule(double gamma) : gamma_(gamma) {}
  std::string name() const override { return "ExponentialLR"; }
  double GetLr(int64_t last_epoch, double lr, double) const override {
    return last_epoch == 0 ? lr : lr * gamma_;
  }
  void AppendLeadingState(Value& state) const override { state.Set("gamma", gamma_); }
  absl::Status LoadState(const Value& state) override {
    EMBER_PS_ASSIGN(gamma_, NeedDouble(state, "gamma"));
    return absl::OkStatus();
  }

 private:
  double gamma_;
};

class MultiStepLrSchedule : public TorchLrSchedule {
 public:
  MultiStepLrSchedule(std::vector<int64_t> milestones, double gamma) : gamma_(gamma) {
    for (int64_t m : milestones) ++counts_[m];
  }
  std::string name() const override { return "MultiStepLR"; }
  double GetLr(int64_t last_epoch, double lr, double) const override {
    auto it = counts_.find(last_epoch);
    if (it == counts_.end()) return lr;
    return lr * std::pow(gamma_, static_cast<double>(it->second));
  }
  // milestones is a collections.Counter {milestone: count}.
  void AppendLeadingState(Value& state) const override {
    Value counter = Value::Dict();
    for (const auto& [m, c] : counts_) counter.Set(Value(m), Value(c));
    state.Set("milestones", std::move(counter));
    state.Set("gamma", gamma_);
  }
  absl::Status LoadState(const Value& state) override {
    const Value* counter;
    EMBER_PS_ASSIGN(counter, Need(state, "milestones"));
    if (!counter->is_dict()) return absl::InvalidArgumentError("milestones should be a dict");
    std::map<int64_t, int64_t> counts;
    for (size_t i = 0; i < counter->keys().size(); ++i) {
      int64_t m, c;
      EMBER_PS_ASSIGN(m, counter->keys()[i].ToInt("milestones key"));
      EMBER_PS_ASSIGN(c, counter->values()[i].ToInt("milestones count"));
      counts[m] = c;
    }
    EMBER_PS_ASSIGN(gamma_, NeedDouble(state, "gamma"));
    counts_ = std::move(counts);
    return absl::OkStatus();
  }

 private:
  std::map<int64_t, int64_t> counts_;
  double gamma_;
};

class CosineAnnealingLrSchedule : public TorchLrSchedule {
 public:
  CosineAnnealingLrSchedule(int64_t t_max, double eta_min) : t_max_(t_max), eta_min_(eta_min) {}
  std::string name() const override { return "CosineAnnealingLR"; }
  double GetLr(int64_t last_epoch, double lr, double base_lr) const override {
    if (last_epoch == 0) return lr;
    return eta_min_ + (base_lr - eta_min_) *
                          (1 + std::cos(static_cast<double>(last_epoch) * M_PI /
                                        static_cast<double>(t_max_))) /
                          2;
  }
  void AppendLeadingState(Value& state) const override {
    state.Set("T_max", t_max_);
    state.Set("eta_min", eta_min_);
  }
  absl::Status LoadState(const Value& state) override {
    int64_t t_max;
    EMBER_PS_ASSIGN(t_max, NeedInt(state, "T_max"));
    EMBER_PS_ASSIGN(eta_min_, NeedDouble(state, "eta_min"));
    if (t_max < 1) return absl::InvalidArgumentError("CosineAnnealingLR T_max should be >= 1");
    t_max_ = t_max;
    return absl::OkStatus();
  }

 private:
  int64_t t_max_;
  double eta_min_;
};

class LambdaLrSchedule : public TorchLrSchedule {
 public:
  explicit LambdaLrSchedule(std::function<double(int64_t)> f) : f_(std::move(f)) {}
  std::string name() const override { return "LambdaLR"; }
  double GetLr(int64_t last_epoch, double, double base_lr) const override {
    return base_lr * f_(last_epoch);
  }
  // Plain functions are saved as None (torch keeps only callable objects' __dict__).
  void AppendTrailingState(Value& state, size_t num_groups) const override {
    Value lambdas = Value::List();
    for (size_t i = 0; i < num_groups; ++i) lambdas.Append(Value());
    state.Set("lr_lambdas", std::move(lambdas));
  }

 private:
  std::function<double(int64_t)> f_;
};

class CosineAnnealingWarmRestartsSchedule : public TorchLrSchedule {
 public:
  CosineAnnealingWarmRestartsSchedule(int64_t t_0, int64_t t_mult, double eta_min)
      : t_0_(t_0), t_i_(t_0), t_mult_(t_mult), eta_min_(eta_min) {}
  std::string name() const override { return "CosineAnnealingWarmRestarts"; }
  void Advance() override {
    ++t_cur_;
    if (t_cur_ >= t_i_) {
      t_cur_ -= t_i_;
      t_i_ *= t_mult_;
    }
  }
  double GetLr(int64_t, double, double base_lr) const override {
    return eta_min_ + (base_lr - eta_min_) *
                          (1 + std::cos(M_PI * static_cast<double>(t_cur_) /
                                        static_cast<double>(t_i_))) /
                          2;
  }
  void AppendLeadingState(Value& state) const override {
    state.Set("T_0", t_0_);
    state.Set("T_i", t_i_);
    state.Set("T_mult", t_mult_);
    state.Set("eta_min", eta_min_);
    state.Set("T_cur", t_cur_);
  }
  absl::Status LoadState(const Value& state) override {
    int64_t t_0, t_i, t_mult, t_cur;
    double eta_min;
    EMBER_PS_ASSIGN(t_0, NeedInt(state, "T_0"));
    EMBER_PS_ASSIGN(t_i, NeedInt(state, "T_i"));
    EMBER_PS_ASSIGN(t_mult, NeedInt(state, "T_mult"));
    EMBER_PS_ASSIGN(eta_min, NeedDouble(state, "eta_min"));
    EMBER_PS_ASSIGN(t_cur, NeedInt(state, "T_cur"));
    if (t_0 < 1 || t_i < 1 || t_mult < 1 || t_cur < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "state_dict of CosineAnnealingWarmRestarts is inconsistent: T_0 ", t_0, ", T_i ", t_i,
          ", T_mult ", t_mult, ", T_cur ", t_cur));
    }
    t_0_ = t_0;
    t_i_ = t_i;
    t_mult_ = t_mult;
    eta_min_ = eta_min;
    t_cur_ = t_cur;
    return absl::OkStatus();
  }

 private:
  int64_t t_0_, t_i_, t_mult_;
  double eta_min_;
  int64_t t_cur_ = 0;
};

}  // namespace

std::unique_ptr<TorchLrSchedule> TorchLrSchedule::CosineAnnealingWarmRestarts(int64_t t_0,
                                                                              int64_t t_mult,
                                                                              double eta_min) {
  return std::make_unique<CosineAnnealingWarmRestartsSchedule>(t_0, t_mult, eta_min);
}

std::unique_ptr<TorchLrSchedule> TorchLrSchedule::StepLR(int64_t step_size, double gamma) {
  return std::make_unique<StepLrSchedule>(step_size, gamma);
}
std::unique_ptr<TorchLrSchedule> TorchLrSchedule::ExponentialLR(double gamma) {
  return std::make_unique<ExponentialLrSchedule>(gamma);
}
std::unique_ptr<TorchLrSchedule> TorchLrSchedule::MultiStepLR(std::vector<int64_t> milestones,
                                                              double gamma) {
  return std::make_unique<MultiStepLrSchedule>(std::move(milestones), gamma);
}
std::unique_ptr<TorchLrSchedule> TorchLrSchedule::CosineAnnealingLR(int64_t t_max,
                                                                    double eta_min) {
  return std::make_unique<CosineAnnealingLrSchedule>(t_max, eta_min);
}
std::unique_ptr<TorchLrSchedule> TorchLrSchedule::LambdaLR(
    std::function<double(int64_t)> lr_lambda) {
  return std::make_unique<LambdaLrSchedule>(std::move(lr_lambda));
}

// ---- LRScheduler ------------------------------------------------------------------------------
LRScheduler::LRScheduler(torch::optim::Optimizer& optimizer,
                         std::unique_ptr<TorchLrSchedule> schedule, bool save_history)
    : ParamScheduler(optimizer, "lr", save_history, std::nullopt), schedule_(std::move(schedule)) {
  // torch's constructor: initial_lr = lr, last_epoch -1 -> 0, lrs = get_lr() at 0.
  for (size_t g = 0; g < optimizer.param_groups().size(); ++g) {
    base_lrs_.push_back(*GetParamGroupOption(optimizer, g, "lr"));
  }
  for (size_t g = 0; g < base_lrs_.size(); ++g) {
    const double lr = schedule_->GetLr(0, base_lrs_[g], base_lrs_[g]);
    (void)SetParamGroupOption(optimizer, g, "lr", lr);
    last_lr_.push_back(lr);
  }
}

absl::StatusOr<std::unique_ptr<LRScheduler>> LRScheduler::Create(
    torch::optim::Optimizer& optimizer, std::unique_ptr<TorchLrSchedule> schedule,
    LRSchedulerOptions options) {
  if (schedule == nullptr) {
    return absl::InvalidArgumentError(
        "Argument lr_scheduler should be a subclass of torch.optim.lr_scheduler._LRScheduler, "
        "but given null");
  }
  absl::Status s = Validate(optimizer, "lr", std::nullopt);
  if (!s.ok()) return s;
  std::unique_ptr<LRScheduler> scheduler(
      new LRScheduler(optimizer, std::move(schedule), options.save_history));
  if (options.use_legacy) scheduler->AdvanceLastEpoch();
  return scheduler;
}

void LRScheduler::FillParam(std::vector<double>& out) {
  schedule_->Advance();
  out.clear();
  for (size_t g = 0; g < base_lrs_.size(); ++g) {
    out.push_back(schedule_->GetLr(last_epoch_, *GetParamGroupOption(*optimizer_, g, "lr"),
                                   base_lrs_[g]));
  }
}

void LRScheduler::Call(ParamHistory* history, const std::string* name) {
  ParamScheduler::Call(history, name);
  ++last_epoch_;
}

void LRScheduler::AppendState(Value& state) const {
  Value torch_state = Value::Dict();
  schedule_->AppendLeadingState(torch_state);
  torch_state.Set("base_lrs", DoubleList(base_lrs_));
  torch_state.Set("last_epoch", last_epoch_);
  torch_state.Set("verbose", false);
  torch_state.Set("_step_count", int64_t{1});
  torch_state.Set("_get_lr_called_within_step", false);
  torch_state.Set("_last_lr", DoubleList(last_lr_));
  schedule_->AppendTrailingState(torch_state, base_lrs_.size());
  state.Set("lr_scheduler", std::move(torch_state));
}

absl::Status LRScheduler::LoadOwnState(const Value& state) {
  const Value* torch_state;
  EMBER_PS_ASSIGN(torch_state, Need(state, "lr_scheduler"));
  if (!torch_state->is_dict()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lr_scheduler should be torch's state_dict (a dict), but given ",
                     torch_state->DebugString()));
  }
  std::vector<double> base_lrs, last_lr;
  int64_t last_epoch;
  EMBER_PS_ASSIGN(base_lrs, NeedDoubleList(*torch_state, "base_lrs"));
  EMBER_PS_ASSIGN(last_epoch, NeedInt(*torch_state, "last_epoch"));
  EMBER_PS_ASSIGN(last_lr, NeedDoubleList(*torch_state, "_last_lr"));
  if (base_lrs.size() != optimizer_->param_groups().size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lr_scheduler's base_lrs has ", base_lrs.size(),
                     " entries, the optimizer has ", optimizer_->param_groups().size(),
                     " param groups"));
  }
  absl::Status s = schedule_->LoadState(*torch_state);
  if (!s.ok()) return s;
  base_lrs_ = std::move(base_lrs);
  last_lr_ = std::move(last_lr);
  last_epoch_ = last_epoch;
  return absl::OkStatus();
}

// ---- Warm-up ----------------------------------------------------------------------------------
namespace {

absl::Status CheckWarmup(const WarmupOptions& options) {
  if (!(options.warmup_duration > 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Argument warmup_duration should be at least 2 events, but given ",
                     options.warmup_duration));
  }
  return absl::OkStatus();
}

// milestones per group -> ConcatScheduler(ParamGroupScheduler(PiecewiseLinear...), scheduler).
absl::StatusOr<std::unique_ptr<ConcatScheduler>> Combine(
    torch::optim::Optimizer& optimizer,
    const std::vector<std::vector<std::pair<int64_t, double>>>& milestones,
    std::unique_ptr<ParamScheduler> scheduler, bool save_history) {
  std::vector<std::unique_ptr<ParamScheduler>> warmups;
  std::vector<std::string> names;
  for (size_t g = 0; g < milestones.size(); ++g) {
    auto pwl = PiecewiseLinear::Create(optimizer, {.param_name = "lr",
                                                   .milestones_values = milestones[g],
                                                   .save_history = save_history,
                                                   .param_group_index = static_cast<int64_t>(g)});
    if (!pwl.ok()) return pwl.status();
    warmups.push_back(*std::move(pwl));
    names.push_back("lr");
  }
  auto group = ParamGroupScheduler::Create(std::move(warmups), std::move(names), save_history);
  if (!group.ok()) return group.status();
  // ignite: durations = [milestones_values[-1][0] + 1] of the last group's milestones.
  const int64_t duration = milestones.back().back().first + 1;
  std::vector<std::unique_ptr<ParamScheduler>> parts;
  parts.push_back(*std::move(group));
  parts.push_back(std::move(scheduler));
  return ConcatScheduler::Create(std::move(parts), {duration}, save_history);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ConcatScheduler>> CreateLrSchedulerWithWarmup(
    torch::optim::Optimizer& optimizer, std::unique_ptr<TorchLrSchedule> lr_schedule,
    WarmupOptions options) {
  if (lr_schedule == nullptr) {
    return absl::InvalidArgumentError(
        "Argument lr_scheduler should be a subclass of torch.optim.lr_scheduler._LRScheduler or "
        "ParamScheduler, but given null");
  }
  absl::Status s = CheckWarmup(options);
  if (!s.ok()) return s;
  auto lr_scheduler = LRScheduler::Create(optimizer, std::move(lr_schedule),
                                          {.save_history = options.save_history});
  if (!lr_scheduler.ok()) return lr_scheduler.status();
  std::vector<std::vector<std::pair<int64_t, double>>> milestones;
  for (size_t g = 0; g < optimizer.param_groups().size(); ++g) {
    const double lr = *GetParamGroupOption(optimizer, g, "lr");
    const double end = options.warmup_end_value.value_or(lr);
    std::vector<std::pair<int64_t, double>> m = {{0, options.warmup_start_value},
                                                 {options.warmup_duration - 1, end}};
    // ignite wraps the torch scheduler while handling group 0; for the other groups the
    // comparison is with LRScheduler.get_param() (a list when there are several groups), which
    // never equals a number: only group 0 gets the extra milestone.
    if (g == 0) {
      if (lr != end) m.push_back({options.warmup_duration, lr});
      (*lr_scheduler)->AdvanceLastEpoch();
    }
    milestones.push_back(std::move(m));
  }
  return Combine(optimizer, milestones, *std::move(lr_scheduler), options.save_history);
}

absl::StatusOr<std::unique_ptr<ConcatScheduler>> CreateLrSchedulerWithWarmup(
    std::unique_ptr<ParamScheduler> lr_scheduler, WarmupOptions options) {
  if (lr_scheduler == nullptr) {
    return absl::InvalidArgumentError(
        "Argument lr_scheduler should be a subclass of torch.optim.lr_scheduler._LRScheduler or "
        "ParamScheduler, but given null");
  }
  absl::Status s = CheckWarmup(options);
  if (!s.ok()) return s;
  if (lr_scheduler->param_name() != "lr") {
    return absl::InvalidArgumentError(absl::StrCat(
        "the scheduler after the warm-up should schedule 'lr', but it schedules '",
        lr_scheduler->param_name(), "'"));
  }
  torch::optim::Optimizer& optimizer = lr_scheduler->optimizer();
  const std::vector<double> init = lr_scheduler->GetParam();
  std::vector<std::vector<std::pair<int64_t, double>>> milestones;
  for (size_t g = 0; g < optimizer.param_groups().size(); ++g) {
    const double end =
        options.warmup_end_value.value_or(*GetParamGroupOption(optimizer, g, "lr"));
    std::vector<std::pair<int64_t, double>> m = {{0, options.warmup_start_value},
                                                 {options.warmup_duration - 1, end}};
    // ignite compares get_param() with the end value: a list (several values) never matches.
    if (init.size() == 1 && init[0] == end) {
      if (options.warmup_duration > 2) {
        const double d = (end - options.warmup_start_value) /
                         static_cast<double>(options.warmup_duration - 1);
        m.back() = {options.warmup_duration - 2, end - d};
      } else {
        m.pop_back();
      }
    }
    milestones.push_back(std::move(m));
  }
  return Combine(optimizer, milestones, std::move(lr_scheduler), options.save_history);
}

// ---- ReduceLROnPlateauScheduler ---------------------------------------------------------------
ReduceLROnPlateauScheduler::ReduceLROnPlateauScheduler(torch::optim::Optimizer& optimizer,
                                                       ReduceLROnPlateauOptions options)
    : optimizer_(&optimizer), options_(std::move(options)) {
  min_lrs_.assign(optimizer.param_groups().size(), 0.0);
  if (options_.param_group_index) {
    min_lrs_[static_cast<size_t>(*options_.param_group_index)] = options_.min_lr;
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  mode_worse_ = options_.mode == "min" ? kInf : -kInf;
  best_ = mode_worse_;
  for (const auto& group : optimizer.param_groups()) last_lr_.push_back(group.options().get_lr());
}

absl::StatusOr<std::unique_ptr<ReduceLROnPlateauScheduler>> ReduceLROnPlateauScheduler::Create(
    torch::optim::Optimizer& optimizer, ReduceLROnPlateauOptions options) {
  absl::Status s = ParamScheduler::Validate(optimizer, "lr", options.param_group_index);
  if (!s.ok()) return s;
  if (options.factor >= 1.0) return absl::InvalidArgumentError("Factor should be < 1.0.");
  if (options.mode != "min" && options.mode != "max") {
    return absl::InvalidArgumentError(absl::StrCat("mode ", options.mode, " is unknown!"));
  }
  if (options.threshold_mode != "rel" && options.threshold_mode != "abs") {
    return absl::InvalidArgumentError(
        absl::StrCat("threshold mode ", options.threshold_mode, " is unknown!"));
  }
  if (options.patience < 0 || options.cooldown < 0) {
    return absl::InvalidArgumentError(absl::StrCat("patience and cooldown should be >= 0, but given ",
                                                   options.patience, " and ", options.cooldown));
  }
  return std::unique_ptr<ReduceLROnPlateauScheduler>(
      new ReduceLROnPlateauScheduler(optimizer, std::move(options)));
}

std::vector<size_t> ReduceLROnPlateauScheduler::group_indices() const {
  if (options_.param_group_index) return {static_cast<size_t>(*options_.param_group_index)};
  std::vector<size_t> all(optimizer_->param_groups().size());
  for (size_t g = 0; g < all.size(); ++g) all[g] = g;
  return all;
}

bool ReduceLROnPlateauScheduler::IsBetter(double a) const {
  const double t = options_.threshold;
  const bool rel = options_.threshold_mode == "rel";
  if (options_.mode == "min") return rel ? a < best_ * (1. - t) : a < best_ - t;
  return rel ? a > best_ * (t + 1.) : a > best_ + t;
}

void ReduceLROnPlateauScheduler::Step(double metric) {
  // torch's ReduceLROnPlateau.step(metric), with ignite's _reduce_lr.
  ++last_epoch_;
  if (IsBetter(metric)) {
    best_ = metric;
    num_bad_epochs_ = 0;
  } else {
    ++num_bad_epochs_;
  }
  if (cooldown_counter_ > 0) {
    --cooldown_counter_;
    num_bad_epochs_ = 0;
  }
  const std::vector<size_t> groups = group_indices();
  if (num_bad_epochs_ > options_.patience) {
    for (size_t i = 0; i < groups.size(); ++i) {
      auto& o = optimizer_->param_groups()[groups[i]].options();
      const double old_lr = o.get_lr();
      const double new_lr = std::max(old_lr * options_.factor, min_lrs_[i]);
      if (old_lr - new_lr > options_.eps) o.set_lr(new_lr);
    }
    cooldown_counter_ = options_.cooldown;
    num_bad_epochs_ = 0;
  }
  last_lr_.clear();
  for (const auto& group : optimizer_->param_groups()) last_lr_.push_back(group.options().get_lr());
  // ParamScheduler.__call__: the lrs stay as they are, recorded, event_index incremented.
  if (options_.save_history) {
    std::vector<double> values;
    for (size_t g : groups) values.push_back(optimizer_->param_groups()[g].options().get_lr());
    history_["lr"].push_back(std::move(values));
  }
  ++event_index_;
}

std::string ReduceLROnPlateauScheduler::label() const {
  const ReduceLROnPlateauOptions d;
  const ReduceLROnPlateauOptions& o = options_;
  std::vector<std::string> parts = {"metric=" + o.metric_name};
  if (o.mode != d.mode) parts.push_back("mode=" + o.mode);
  if (o.factor != d.factor) parts.push_back("factor=" + dist::CanonicalDouble(o.factor));
  if (o.patience != d.patience) parts.push_back(absl::StrCat("patience=", o.patience));
  if (o.threshold != d.threshold) parts.push_back("threshold=" + dist::CanonicalDouble(o.threshold));
  if (o.threshold_mode != d.threshold_mode) parts.push_back("threshold_mode=" + o.threshold_mode);
  if (o.cooldown != d.cooldown) parts.push_back(absl::StrCat("cooldown=", o.cooldown));
  if (o.min_lr != d.min_lr) parts.push_back("min_lr=" + dist::CanonicalDouble(o.min_lr));
  if (o.eps != d.eps) parts.push_back("eps=" + dist::CanonicalDouble(o.eps));
  if (o.param_group_index) parts.push_back(absl::StrCat("param_group_index=", *o.param_group_index));
  return absl::StrJoin(parts, ", ");
}

absl::Status ReduceLROnPlateauScheduler::Propose(Engine& engine, absl::Span<double> values) {
  auto it = engine.state().metrics.find(options_.metric_name);
  if (it == engine.state().metrics.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument engine should have in its 'state', attribute 'metrics' which itself has the "
        "metric ",
        options_.metric_name, "."));
  }
  values[0] = it->second;
  return absl::OkStatus();
}

absl::Status ReduceLROnPlateauScheduler::Decide(Engine&, const Agreement& agreement) {
  Step(agreement.value(0));
  return absl::OkStatus();
}

absl::StatusOr<SimulatedValues> ReduceLROnPlateauScheduler::Simulate(
    int64_t num_events, const std::vector<double>& metric_values, double init_lr,
    ReduceLROnPlateauOptions options) {
  if (static_cast<int64_t>(metric_values.size()) != num_events) {
    return absl::InvalidArgumentError(
        absl::StrCat("Length of argument metric_values should be equal to num_events. ",
                     metric_values.size(), " != ", num_events));
  }
  torch::Tensor param = torch::zeros({1});
  torch::optim::SGD sgd(std::vector<torch::Tensor>{param}, torch::optim::SGDOptions(init_lr));
  options.save_history = false;
  auto scheduler = Create(sgd, std::move(options));
  if (!scheduler.ok()) return scheduler.status();
  SimulatedValues out;
  for (int64_t i = 0; i < num_events; ++i) {
    (*scheduler)->Step(metric_values[static_cast<size_t>(i)]);
    out.emplace_back(i, std::vector<double>{sgd.param_groups()[0].options().get_lr()});
  }
  return out;
}

Value ReduceLROnPlateauScheduler::StateDict() const {
  Value state = Value::Dict(/*ordered=*/true);
  state.Set("event_index", event_index_);
  state.Set("param_name", "lr");
  state.Set("save_history", options_.save_history);
  state.Set("param_group_index",
            options_.param_group_index ? Value(*options_.param_group_index) : Value());
  state.Set("metric_name", options_.metric_name);
  Value torch_state = Value::Dict();
  torch_state.Set("factor", options_.factor);
  torch_state.Set("min_lrs", DoubleList(min_lrs_));
  torch_state.Set("patience", options_.patience);
  torch_state.Set("verbose", false);
  torch_state.Set("cooldown", options_.cooldown);
  torch_state.Set("cooldown_counter", cooldown_counter_);
  torch_state.Set("mode", options_.mode);
  torch_state.Set("threshold", options_.threshold);
  torch_state.Set("threshold_mode", options_.threshold_mode);
  torch_state.Set("best", best_);
  torch_state.Set("num_bad_epochs", num_bad_epochs_);
  torch_state.Set("mode_worse", mode_worse_);
  torch_state.Set("eps", options_.eps);
  torch_state.Set("last_epoch", last_epoch_);
  torch_state.Set("_last_lr", DoubleList(last_lr_));
  state.Set("scheduler", std::move(torch_state));
  return state;
}

absl::Status ReduceLROnPlateauScheduler::LoadStateDict(const Value& state) {
  int64_t event_index;
  EMBER_PS_ASSIGN(event_index, NeedInt(state, "event_index"));
  const Value* metric;
  EMBER_PS_ASSIGN(metric, Need(state, "metric_name"));
  std::string metric_name;
  EMBER_PS_ASSIGN(metric_name, metric->ToString("metric_name"));
  if (metric_name != options_.metric_name) {
    return absl::InvalidArgumentError(absl::StrCat("the state_dict is of a scheduler on metric '",
                                                   metric_name, "', this one reads '",
                                                   options_.metric_name, "'"));
  }
  const Value* ts;
  EMBER_PS_ASSIGN(ts, Need(state, "scheduler"));
  std::vector<double> min_lrs, last_lr;
  double best;
  int64_t bad, cooldown_counter, last_epoch;
  EMBER_PS_ASSIGN(min_lrs, NeedDoubleList(*ts, "min_lrs"));
  EMBER_PS_ASSIGN(best, NeedDouble(*ts, "best"));
  EMBER_PS_ASSIGN(bad, NeedInt(*ts, "num_bad_epochs"));
  EMBER_PS_ASSIGN(cooldown_counter, NeedInt(*ts, "cooldown_counter"));
  EMBER_PS_ASSIGN(last_epoch, NeedInt(*ts, "last_epoch"));
  EMBER_PS_ASSIGN(last_lr, NeedDoubleList(*ts, "_last_lr"));
  if (min_lrs.size() != optimizer_->param_groups().size()) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler's min_lrs has ", min_lrs.size(),
                                                   " entries, the optimizer has ",
                                                   optimizer_->param_groups().size(),
                                                   " param groups"));
  }
  event_index_ = event_index;
  min_lrs_ = std::move(min_lrs);
  best_ = best;
  num_bad_epochs_ = bad;
  cooldown_counter_ = cooldown_counter;
  last_epoch_ = last_epoch;
  last_lr_ = std::move(last_lr);
  return absl::OkStatus();
}

}  // namespace ember
