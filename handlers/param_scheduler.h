// File: handlers/param_scheduler.h
//
// Parameter schedulers (ignite v0.5.3's handlers/param_scheduler.py): handlers that set an option
// of a torch::optim optimizer's param groups (lr, momentum, weight_decay, ...) once per event.
// They are one family, kept in one header because they compose (ConcatScheduler and
// ParamGroupScheduler hold schedulers of the others; the warm-up builder returns a composition):
//
//   ParamScheduler                the base: param_name, save_history, param_group_index,
//                                 event_index (the number of events seen in the current cycle)
//   LinearCyclicalScheduler       triangle wave (or, monotonic, one ramp plus a warm-up back)
//   CosineAnnealingScheduler      half cosine start -> end per cycle
//     both: cycle_mult, start_value_mult, end_value_mult, warmup_duration
//   PiecewiseLinear               linear between (milestone, value) pairs
//   ConcatScheduler               one scheduler after another, for `durations` events each
//   ParamGroupScheduler           one scheduler per param group, called together
//   LRScheduler                   adapter for a torch.optim.lr_scheduler (TorchLrSchedule)
//   CreateLrSchedulerWithWarmup   PiecewiseLinear warm-up, then the given scheduler
//   ReduceLROnPlateauScheduler    torch's ReduceLROnPlateau on a metric, agreed across ranks
//
// Per event (ignite's __call__): the value(s) of GetParam() are written to the targeted param
// groups (all of them, or the one of param_group_index), the values are appended to the history
// when save_history is on, and event_index is incremented. Attach with
//   trainer.On(Events::IterationStarted(), *scheduler);   // or std::move(scheduler): owned
// Any event works (EPOCH_STARTED schedules per epoch). Schedulers are not copyable: an lvalue
// passed to On() is referenced, so it must outlive the engine's use of it.
//
// Schedulable options, by optimizer type (the options' typed setters; other names fail at
// Create with kInvalidArgument naming the bad name and the allowed ones):
//   SGD      lr, momentum, dampening, weight_decay
//   Adam     lr, eps, weight_decay          AdamW    lr, eps, weight_decay
//   Adagrad  lr, lr_decay, weight_decay, initial_accumulator_value, eps
//   RMSprop  lr, alpha, eps, weight_decay, momentum
//   LBFGS    lr
//
// State: each scheduler is Stateful, with ignite's state_dict() keys and order (event_index,
// param_name, save_history, param_group_index, then the class's own); a scheduler loaded from a
// state_dict taken at any event continues exactly, given the optimizer's state too (LRScheduler
// multiplies the group's current lr, as torch's schedulers do).
//
// Ember differs from ignite:
//   - param_history is kept by the scheduler that is attached (param_history()), keyed as
//     ignite keys engine.state.param_history; Ember's engine State holds scalars only.
//   - Arguments Python checks by type at run time (a float milestone, a non-scheduler in a list)
//     are C++ types here; the other argument errors carry ignite's message, except where ignite
//     prints Python object reprs (given the count instead).
//   - LoadStateDict refuses a state_dict of another param_name or param_group_index (ignite
//     silently retargets the scheduler).
//   - LRScheduler takes a TorchLrSchedule: the chainable get_lr() of torch's StepLR,
//     ExponentialLR, MultiStepLR, CosineAnnealingLR and LambdaLR, ported (LibTorch 1.13 has only
//     StepLR, whose get_lrs() is protected and whose step count is private, so it can neither be
//     asked for the next value nor restored from a checkpoint). For CosineAnnealingWarmRestarts
//     ignite pickles a private adapter object instead of a state_dict; Ember saves torch's.
//   - simulate_values is a method of a built scheduler (it simulates from its current state and
//     restores it and the optimizer's options afterwards), or a static of the class that builds
//     its own optimizer (the three basic schedulers, as ignite's classmethod does).
//
// Not thread-safe: the engine's thread calls it, and the optimizer must not be stepped by
// another thread meanwhile. Multi-rank: a plain handler; every rank computes the same values.
#ifndef EMBER_HANDLERS_PARAM_SCHEDULER_H_
#define EMBER_HANDLERS_PARAM_SCHEDULER_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "engine/synchronized_handler.h"
#include "handlers/checkpoint/stateful.h"
#include "handlers/serialization/value.h"

namespace ember {

// ---- Param-group options --------------------------------------------------------------------
// The option names SetParamGroupOption accepts for `optimizer`'s type (the table above).
std::vector<std::string> SchedulableOptionNames(const torch::optim::Optimizer& optimizer);
// kInvalidArgument for an unknown name ("param_name 'x' is not a schedulable option of SGD's
// param groups; allowed: lr, momentum, dampening, weight_decay") or group index.
absl::StatusOr<double> GetParamGroupOption(const torch::optim::Optimizer& optimizer, size_t group,
                                           const std::string& name);
absl::Status SetParamGroupOption(torch::optim::Optimizer& optimizer, size_t group,
                                 const std::string& name, double value);

// ignite's engine.state.param_history: name -> one entry per event, each the values of the
// scheduler's param groups.
using ParamHistory = std::map<std::string, std::vector<std::vector<double>>>;

// One simulated event: the index, then values (see each SimulateValues).
using SimulatedValues = std::vector<std::pair<int64_t, std::vector<double>>>;

// ---- ParamScheduler -------------------------------------------------------------------------
class ReduceLROnPlateauScheduler;

class ParamScheduler : public Stateful {
 public:
  ParamScheduler(const ParamScheduler&) = delete;
  ParamScheduler& operator=(const ParamScheduler&) = delete;
  ~ParamScheduler() override = default;

  // The handler: one event (records param_history() when save_history is on).
  void operator()(Engine& engine);
  // One event without an engine (ignite's scheduler(engine=None)): no history.
  void Step();

  // The value the next event sets: one value for every targeted group, or one per group.
  std::vector<double> GetParam();
  // The same into `out` (replacing its contents): what each scheduler implements; an event fills
  // a buffer the scheduler keeps, so that it allocates nothing.
  virtual void FillParam(std::vector<double>& out) = 0;

  const std::string& param_name() const { return param_name_; }
  bool save_history() const { return save_history_; }
  virtual void set_save_history(bool on) { save_history_ = on; }
  int64_t event_index() const { return event_index_; }
  std::optional<int64_t> param_group_index() const { return param_group_index_; }
  torch::optim::Optimizer& optimizer() const { return *optimizer_; }
  // The groups it writes: {param_group_index} or all.
  std::vector<size_t> group_indices() const;
  const ParamHistory& param_history() const { return history_; }

  // Runs `num_events` events from the current state and returns, for each, the index and the
  // value of each of `param_names` (default {param_name()}) for each of its groups, read after
  // the event (ignite's simulate_values of ConcatScheduler and LRScheduler). The scheduler's
  // state and every schedulable option of the optimizer are restored afterwards.
  absl::StatusOr<SimulatedValues> SimulateValues(int64_t num_events,
                                                 std::vector<std::string> param_names = {});

  Value StateDict() const override;
  absl::Status LoadStateDict(const Value& state) override;

 protected:
  ParamScheduler(torch::optim::Optimizer& optimizer, std::string param_name, bool save_history,
                 std::optional<int64_t> param_group_index);
  // Checks param_name and param_group_index against the optimizer.
  static absl::Status Validate(const torch::optim::Optimizer& optimizer,
                               const std::string& param_name,
                               std::optional<int64_t> param_group_index);

  // ignite's __call__(engine, name): history is null without an engine, name null for "use
  // param_name". The default applies GetParam().
  virtual void Call(ParamHistory* history, const std::string* name);
  // The base __call__ body: write `values`, record, ++event_index.
  void Apply(const std::vector<double>& values, ParamHistory* history, const std::string* name);
  // Adds the class's own state after the base keys / loads it.
  virtual void AppendState(Value& state) const { (void)state; }
  virtual absl::Status LoadOwnState(const Value& state) {
    (void)state;
    return absl::OkStatus();
  }

  friend class ConcatScheduler;
  friend class ParamGroupScheduler;
  friend class ReduceLROnPlateauScheduler;

  torch::optim::Optimizer* optimizer_;
  std::string param_name_;
  bool save_history_;
  std::optional<int64_t> param_group_index_;
  int64_t event_index_ = 0;
  ParamHistory history_;
  std::vector<double> param_values_;  // Call's values, reused from event to event
};

// ---- Cyclical schedulers --------------------------------------------------------------------
struct CyclicalSchedulerOptions {
  std::string param_name;
  double start_value = 0.0;
  double end_value = 0.0;
  int64_t cycle_size = 0;  // events per cycle, >= 2
  double cycle_mult = 1.0;        // cycle_size (and warmup_duration) *= cycle_mult per cycle, truncated
  double start_value_mult = 1.0;  // start_value *= this when event_index reaches cycle_size
  double end_value_mult = 1.0;    // end_value *= this at each new cycle
  int64_t warmup_duration = 0;    // events from end_value back to start_value after each cycle
  bool save_history = false;
  std::optional<int64_t> param_group_index;
  bool monotonic = false;  // LinearCyclicalScheduler only
};

// ignite's CyclicalScheduler: at each event, first start_value *= start_value_mult when
// event_index == cycle_size, then a new cycle starts when event_index == cycle_size +
// warmup_duration (event_index = 0, the sizes scaled by cycle_mult, end_value *= end_value_mult,
// cycle += 1). During the warm-up (event_index >= cycle_size) the value goes linearly from
// end_value back to start_value. State adds start_value, end_value, cycle_size, cycle_mult,
// cycle, start_value_mult, end_value_mult, warmup_duration, total_cycle_size.
class CyclicalScheduler : public ParamScheduler {
 public:
  void FillParam(std::vector<double>& out) override;
  int64_t cycle() const { return cycle_; }

 protected:
  CyclicalScheduler(torch::optim::Optimizer& optimizer, const CyclicalSchedulerOptions& options);
  static absl::Status ValidateCyclical(const torch::optim::Optimizer& optimizer,
                                       const CyclicalSchedulerOptions& options);
  // The value inside the cycle (event_index < cycle_size).
  virtual double CycleParam() const = 0;
  void Call(ParamHistory* history, const std::string* name) override;
  void AppendState(Value& state) const override;
  absl::Status LoadOwnState(const Value& state) override;

  double start_value_, end_value_;
  int64_t cycle_size_;
  double cycle_mult_;
  int64_t cycle_ = 0;
  double start_value_mult_, end_value_mult_;
  int64_t warmup_duration_, total_cycle_size_;
};

// value = end + (start - end) * |event_index / cycle_size - 0.5| * 2 (start -> end -> start);
// monotonic: start + (end - start) * event_index / cycle_size, then the warm-up back.
// Errors (ignite's): "Argument cycle_size should be positive and larger than 1, but given 1";
// "Invalid combination when warmup_duration > 0 and monotonic=False, please use either set
// warmup_duration=0 or monotonic=True".
//
// Example:
//   auto lr = ember::LinearCyclicalScheduler::Create(
//       optimizer, {.param_name = "lr", .start_value = 1.0, .end_value = 0.0, .cycle_size = 6});
//   trainer.On(ember::Events::IterationStarted(), *std::move(lr));
class LinearCyclicalScheduler : public CyclicalScheduler {
 public:
  static absl::StatusOr<std::unique_ptr<LinearCyclicalScheduler>> Create(
      torch::optim::Optimizer& optimizer, CyclicalSchedulerOptions options);
  // [i, value after the i-th event] on an internal SGD(lr=0.01) (ignite's classmethod).
  static absl::StatusOr<SimulatedValues> Simulate(int64_t num_events,
                                                  CyclicalSchedulerOptions options);

 protected:
  double CycleParam() const override;

 private:
  LinearCyclicalScheduler(torch::optim::Optimizer& optimizer,
                          const CyclicalSchedulerOptions& options)
      : CyclicalScheduler(optimizer, options), monotonic_(options.monotonic) {}
  bool monotonic_;
};

// value = start + (end - start) / 2 * (1 - cos(pi * event_index / cycle_size)); end_value itself
// is never reached (the next cycle starts instead). `monotonic` is refused.
class CosineAnnealingScheduler : public CyclicalScheduler {
 public:
  static absl::StatusOr<std::unique_ptr<CosineAnnealingScheduler>> Create(
      torch::optim::Optimizer& optimizer, CyclicalSchedulerOptions options);
  static absl::StatusOr<SimulatedValues> Simulate(int64_t num_events,
                                                  CyclicalSchedulerOptions options);

 protected:
  double CycleParam() const override;

 private:
  using CyclicalScheduler::CyclicalScheduler;
};

// ---- PiecewiseLinear ------------------------------------------------------------------------
struct PiecewiseLinearOptions {
  std::string param_name;
  // (milestone, value) pairs, milestones non-decreasing (an equal pair makes a jump).
  std::vector<std::pair<int64_t, double>> milestones_values;
  bool save_history = false;
  std::optional<int64_t> param_group_index;
};

// Before the first milestone the first value, after the last the last, linear in between.
// State adds values, milestones, _index. Errors (ignite's): "Argument milestones_values should
// be with at least one value, but given []"; "Milestones should be increasing integers, but
// given 3 is smaller than the previous milestone 5".
class PiecewiseLinear : public ParamScheduler {
 public:
  static absl::StatusOr<std::unique_ptr<PiecewiseLinear>> Create(
      torch::optim::Optimizer& optimizer, PiecewiseLinearOptions options);
  static absl::StatusOr<SimulatedValues> Simulate(int64_t num_events,
                                                  PiecewiseLinearOptions options);
  void FillParam(std::vector<double>& out) override;

 protected:
  void AppendState(Value& state) const override;
  absl::Status LoadOwnState(const Value& state) override;

 private:
  PiecewiseLinear(torch::optim::Optimizer& optimizer, const PiecewiseLinearOptions& options);
  std::vector<double> values_;
  std::vector<int64_t> milestones_;
  int64_t index_ = 0;
};

// ---- ParamGroupScheduler --------------------------------------------------------------------
// Calls each of its schedulers (typically one per param group) at every event; history entries
// are keyed by `names` (default: each scheduler's param_name). state_dict is ignite's
// {"schedulers": [[name, state_dict], ...]} only. Errors (ignite's): "2 should be equal 1"
// (names count); "Name of scheduler from input state dict does not correspond to required one,
// x vs b". Its param_name is the first scheduler's.
class ParamGroupScheduler : public ParamScheduler {
 public:
  static absl::StatusOr<std::unique_ptr<ParamGroupScheduler>> Create(
      std::vector<std::unique_ptr<ParamScheduler>> schedulers, std::vector<std::string> names = {},
      bool save_history = false);
  // Each scheduler's GetParam(), concatenated.
  void FillParam(std::vector<double>& out) override;
  void set_save_history(bool on) override;
  const std::vector<std::unique_ptr<ParamScheduler>>& schedulers() const { return schedulers_; }
  const std::vector<std::string>& names() const { return names_; }
  // ignite's ParamGroupScheduler.simulate_values: [i, GetParam() of each scheduler] read BEFORE
  // the i-th event; state and options restored afterwards.
  absl::StatusOr<SimulatedValues> SimulateGroupValues(int64_t num_events);

  Value StateDict() const override;
  absl::Status LoadStateDict(const Value& state) override;

 protected:
  void Call(ParamHistory* history, const std::string* name) override;

 private:
  ParamGroupScheduler(std::vector<std::unique_ptr<ParamScheduler>> schedulers,
                      std::vector<std::string> names, bool save_history);
  std::vector<std::unique_ptr<ParamScheduler>> schedulers_;
  std::vector<std::string> names_;
};

// ---- ConcatScheduler ------------------------------------------------------------------------
// schedulers[0] for durations[0] events, then schedulers[1] for durations[1], ..., the last one
// for ever. Each keeps its own event_index (it starts at 0 when first used); the switch happens
// at the call after a duration is used up. State adds _current_duration, durations,
// _scheduler_index, schedulers (each one's state_dict); its own event_index stays 0. Errors
// (ignite's): "Argument schedulers should be of more than one parameter schedulers, but given
// 1"; "Incorrect number schedulers or duration values, given 2 and 2"; "schedulers should be
// related to same param_name"; "schedulers should be related to same optimizer"; a negative
// duration: "Argument durations should be list/tuple of integers, but given [-1]".
class ConcatScheduler : public ParamScheduler {
 public:
  static absl::StatusOr<std::unique_ptr<ConcatScheduler>> Create(
      std::vector<std::unique_ptr<ParamScheduler>> schedulers, std::vector<int64_t> durations,
      bool save_history = false);
  void FillParam(std::vector<double>& out) override;
  void set_save_history(bool on) override;
  const std::vector<std::unique_ptr<ParamScheduler>>& schedulers() const { return schedulers_; }

 protected:
  void Call(ParamHistory* history, const std::string* name) override;
  void AppendState(Value& state) const override;
  absl::Status LoadOwnState(const Value& state) override;

 private:
  ConcatScheduler(std::vector<std::unique_ptr<ParamScheduler>> schedulers,
                  std::vector<int64_t> durations, bool save_history);
  void SetupScheduler();
  std::vector<std::unique_ptr<ParamScheduler>> schedulers_;
  std::vector<int64_t> durations_;
  int64_t scheduler_index_ = 0;
  int64_t current_duration_ = 0;
};

// ---- LRScheduler ----------------------------------------------------------------------------
// A torch.optim.lr_scheduler as ignite drives it: get_lr() evaluated at last_epoch on the
// group's current lr (chainable form), then last_epoch incremented; torch's step() is never
// called, so its _step_count stays 1.
class TorchLrSchedule {
 public:
  virtual ~TorchLrSchedule() = default;
  virtual std::string name() const = 0;
  // get_lr() for one group at `last_epoch`, `lr` the group's current lr, `base_lr` its
  // initial_lr.
  virtual double GetLr(int64_t last_epoch, double lr, double base_lr) const = 0;
  // torch's state_dict entries before base_lrs (the constructor's arguments) and after
  // _last_lr (LambdaLR's lr_lambdas), and loading them back.
  virtual void AppendLeadingState(Value& state) const { (void)state; }
  virtual void AppendTrailingState(Value& state, size_t num_groups) const {
    (void)state;
    (void)num_groups;
  }
  virtual absl::Status LoadState(const Value& state) {
    (void)state;
    return absl::OkStatus();
  }
  // Called once at the start of every get_lr() (ignite's CosineAnnealingWarmRestarts adapter
  // advances T_cur there); nothing for the others.
  virtual void Advance() {}

  // torch.optim.lr_scheduler's classes (arguments and formulas of torch 1.13).
  static std::unique_ptr<TorchLrSchedule> StepLR(int64_t step_size, double gamma = 0.1);
  static std::unique_ptr<TorchLrSchedule> ExponentialLR(double gamma);
  static std::unique_ptr<TorchLrSchedule> MultiStepLR(std::vector<int64_t> milestones,
                                                      double gamma = 0.1);
  // With _step_count == 1 (ignite never calls step()), torch's closed form:
  // eta_min + (base_lr - eta_min) * (1 + cos(last_epoch * pi / T_max)) / 2 for last_epoch > 0.
  static std::unique_ptr<TorchLrSchedule> CosineAnnealingLR(int64_t t_max, double eta_min = 0.0);
  // lr = base_lr * lr_lambda(last_epoch), a function of the step (lr_lambdas saved as None).
  static std::unique_ptr<TorchLrSchedule> LambdaLR(std::function<double(int64_t)> lr_lambda);
  // As ignite drives it (its private _CosineAnnealingWarmRestarts adapter): every get_lr()
  // first advances T_cur (restarting, T_i *= T_mult, when it reaches T_i), so the first event
  // already gives the value at T_cur = 1; lr = eta_min + (base_lr - eta_min) *
  // (1 + cos(pi * T_cur / T_i)) / 2. Ember saves torch's state_dict for it (T_0, T_i, T_mult,
  // eta_min, T_cur, ...) where ignite pickles the adapter object.
  static std::unique_ptr<TorchLrSchedule> CosineAnnealingWarmRestarts(int64_t t_0,
                                                                      int64_t t_mult = 1,
                                                                      double eta_min = 0.0);
};

struct LRSchedulerOptions {
  bool save_history = false;
  // ignite's use_legacy: last_epoch advanced by one at construction, for ITERATION_COMPLETED.
  bool use_legacy = false;
};

// Builds the torch scheduler on `optimizer` as torch's constructor does (initial_lr = each
// group's lr, last_epoch = 0, the lrs set to get_lr() at 0) and wraps it (ignite's LRScheduler;
// param_name "lr", all groups). State adds lr_scheduler: torch's state_dict (the schedule's
// arguments, base_lrs, last_epoch, verbose, _step_count, _get_lr_called_within_step, _last_lr).
class LRScheduler : public ParamScheduler {
 public:
  static absl::StatusOr<std::unique_ptr<LRScheduler>> Create(
      torch::optim::Optimizer& optimizer, std::unique_ptr<TorchLrSchedule> schedule,
      LRSchedulerOptions options = {});
  void FillParam(std::vector<double>& out) override;
  int64_t last_epoch() const { return last_epoch_; }
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  // torch's `lr_scheduler.last_epoch += 1` (what use_legacy and the warm-up builder do).
  void AdvanceLastEpoch() { ++last_epoch_; }

 protected:
  void Call(ParamHistory* history, const std::string* name) override;
  void AppendState(Value& state) const override;
  absl::Status LoadOwnState(const Value& state) override;

 private:
  LRScheduler(torch::optim::Optimizer& optimizer, std::unique_ptr<TorchLrSchedule> schedule,
              bool save_history);
  std::unique_ptr<TorchLrSchedule> schedule_;
  std::vector<double> base_lrs_;
  std::vector<double> last_lr_;  // torch's _last_lr: the lrs its constructor set
  int64_t last_epoch_ = 0;
};

// ---- Warm-up --------------------------------------------------------------------------------
struct WarmupOptions {
  double warmup_start_value = 0.0;
  int64_t warmup_duration = 0;  // >= 2
  // Default: each group warms up to its own lr.
  std::optional<double> warmup_end_value;
  bool save_history = false;
};

// ignite's create_lr_scheduler_with_warmup: a ConcatScheduler of a ParamGroupScheduler of
// PiecewiseLinear warm-ups (one per group, names "lr") and then the scheduler.
// - A torch schedule: its last_epoch is advanced by one (so the first value after the warm-up
//   is not a repeat), and when group 0's lr differs from its warm-up end value a milestone
//   (warmup_duration, lr) is added: the warm-up lasts warmup_duration+1 events. (As in ignite,
//   that milestone is added for group 0 only.)
// - An ignite scheduler whose first value equals the warm-up end value: the last milestone moves
//   to (warmup_duration-2, end - (end-start)/(warmup_duration-1)) (or is dropped when
//   warmup_duration is 2), so the scheduler supplies that value.
// ignite's output_simulated_values is SimulateValues(n) on the result.
// Error (ignite's): "Argument warmup_duration should be at least 2 events, but given 1".
absl::StatusOr<std::unique_ptr<ConcatScheduler>> CreateLrSchedulerWithWarmup(
    torch::optim::Optimizer& optimizer, std::unique_ptr<TorchLrSchedule> lr_schedule,
    WarmupOptions options);
absl::StatusOr<std::unique_ptr<ConcatScheduler>> CreateLrSchedulerWithWarmup(
    std::unique_ptr<ParamScheduler> lr_scheduler, WarmupOptions options);

// ---- ReduceLROnPlateauScheduler ---------------------------------------------------------------
struct ReduceLROnPlateauOptions {
  std::string metric_name;  // read from the attached engine's state().metrics
  std::string mode = "min";            // "min" or "max"
  double factor = 0.1;                 // < 1
  int64_t patience = 10;
  double threshold = 1e-4;
  std::string threshold_mode = "rel";  // "rel" or "abs"
  int64_t cooldown = 0;
  // Used only with param_group_index (as in ignite: without it every group's bound is 0).
  double min_lr = 0.0;
  double eps = 1e-8;
  bool save_history = false;
  std::optional<int64_t> param_group_index;
  dist::Reduction reduction = dist::Reduction::kMean;  // how the ranks' metrics are combined
};

// ignite's ReduceLROnPlateauScheduler: torch's ReduceLROnPlateau stepped with the metric at each
// call (attach it to an evaluator's COMPLETED), reducing the lr of its groups by `factor` after
// more than `patience` calls without improvement, then waiting `cooldown` calls. As in ignite,
// the bound used for a group is min_lrs[i], i its position among the groups the scheduler
// targets (so with param_group_index > 0 the bound is 0).
//
// Multi-rank: a SynchronizedHandler like EarlyStopping: the metric is reduced across ranks
// (MEAN by default) in the firing's one collective before the step, so every rank holds the same
// lr. State: ignite's keys (event_index, param_name, save_history, param_group_index,
// metric_name, scheduler: torch's state_dict without the bound method _reduce_lr). Unlike
// ignite, whose loaded scheduler keeps reducing the lr of the optimizer it was saved from, a
// loaded Ember scheduler acts on its own optimizer, so a resumed run continues exactly. History
// (save_history) is kept even without a trainer. Errors (ignite's): "Factor should be < 1.0.",
// "mode avg is unknown!", "threshold mode x is unknown!", "Argument engine should have in its
// 'state', attribute 'metrics' which itself has the metric loss.".
class ReduceLROnPlateauScheduler : public SynchronizedHandler, public Stateful {
 public:
  static absl::StatusOr<std::unique_ptr<ReduceLROnPlateauScheduler>> Create(
      torch::optim::Optimizer& optimizer, ReduceLROnPlateauOptions options);
  // ignite's simulate_values: [i, lr after the i-th metric] on an SGD(lr=init_lr).
  static absl::StatusOr<SimulatedValues> Simulate(int64_t num_events,
                                                  const std::vector<double>& metric_values,
                                                  double init_lr,
                                                  ReduceLROnPlateauOptions options);
  ReduceLROnPlateauScheduler(const ReduceLROnPlateauScheduler&) = delete;
  ReduceLROnPlateauScheduler& operator=(const ReduceLROnPlateauScheduler&) = delete;

  // One call with an agreed metric (what Decide does).
  void Step(double metric);

  double best() const { return best_; }
  int64_t num_bad_epochs() const { return num_bad_epochs_; }
  int64_t cooldown_counter() const { return cooldown_counter_; }
  int64_t last_epoch() const { return last_epoch_; }
  const std::vector<double>& min_lrs() const { return min_lrs_; }
  const ParamHistory& param_history() const { return history_; }

  size_t num_values() const override { return 1; }
  dist::Reduction reduction(size_t) const override { return options_.reduction; }
  absl::Status Propose(Engine& engine, absl::Span<double> values) override;
  absl::Status Decide(Engine& engine, const Agreement& agreement) override;
  // "metric=<metric_name>", then the options that differ from their defaults ("metric=loss,
  // mode=max, patience=3"), for the layout the ranks agree on: a rank with another factor or
  // patience fails the run's start agreement instead of holding another lr.
  std::string label() const override;

  Value StateDict() const override;
  absl::Status LoadStateDict(const Value& state) override;

 private:
  ReduceLROnPlateauScheduler(torch::optim::Optimizer& optimizer, ReduceLROnPlateauOptions options);
  bool IsBetter(double a) const;
  std::vector<size_t> group_indices() const;

  torch::optim::Optimizer* optimizer_;
  ReduceLROnPlateauOptions options_;
  std::vector<double> min_lrs_;
  double best_;
  double mode_worse_;
  int64_t num_bad_epochs_ = 0;
  int64_t cooldown_counter_ = 0;
  int64_t last_epoch_ = 0;
  int64_t event_index_ = 0;
  std::vector<double> last_lr_;
  ParamHistory history_;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_PARAM_SCHEDULER_H_
