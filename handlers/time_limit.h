// File: handlers/time_limit.h
//
// TimeLimit (ignite's): stops the engine it is attached to once a time budget is spent.
// Typically attached to the trainer's ITERATION_COMPLETED. The clock starts when the handler is
// created (not when the run starts); at each call, with elapsed = now - creation, the engine is
// terminated (TERMINATE, then COMPLETED) when elapsed > limit_sec, strictly. ignite's argument
// rules and messages: limit_sec must be a positive integer ("Argument limit_sec should be a
// positive integer."); ignite's TypeError for a float or None is a compile-time error here
// (limit_sec is an int64_t: `.limit_sec = 1.5` does not compile).
//
// Ember's additions (off by default, so that the default is ignite's behaviour):
//   - budget kSlurmJobEnd: the budget is the time left, at creation, until the Slurm job's end,
//     read from SLURM_JOB_END_TIME (a Unix time in whole seconds, set in the job's environment by
//     recent Slurm versions); limit_sec is then not used. Create fails when the variable is
//     absent (kNotFound), not a plain decimal number (kInvalidArgument, naming the value), or
//     already past (kFailedPrecondition).
//   - safety: stop early enough to save. The engine is terminated at the first call where
//       elapsed + next_step + save_reserve > budget
//     next_step is the longest time between two calls seen so far (one step with its handlers),
//     without the time spent saving in it; save_reserve is the larger of final_save_reserve_sec
//     and the longest single save measured through `save_time` (a cumulative time, e.g.
//     Checkpoint::blocked_time(): each increase between two calls is one save; with async_save
//     that is only the blocked part, so give a reserve for the final, whole save). Every rank's
//     values are reduced with MAX, so ranks with different reserves decide on one number. Before
//     a second call there is no step measurement (next_step = 0).
//
// Differences from ignite v0.5.3: the decision is agreed across ranks (below); a stop says who
// stopped the run (engine.outcome().terminated_by == "TimeLimit") and is readable afterwards
// (stopped(), stop()); the log line (base/log.h, INFO) names the elapsed time, the limit, the
// epoch and the iteration besides ignite's "Reached the time limit: N sec. Stop training";
// time comes from an injectable monotonic Clock (ignite reads time.time()). No state_dict
// (ignite has none): a resumed run's handler starts its clock when it is created.
//
// Multi-rank: a SynchronizedHandler. Ranks' clocks differ (each rank's handler was created at
// another moment, nodes' wall clocks drift), so each rank proposes its overrun (elapsed - its
// budget) and, in safety mode, its step and save measurements, all reduced with MAX in the
// firing's one collective: every rank stops at the same iteration, if ANY rank is over its
// budget (or, in safety mode, would be after the next step and the final save, measured as the
// slowest rank's). Its proposal reads only the clock and save_time, so it may ride the step's
// collective (proposes_in_step): the clock is then read in the step, before the firing's
// handlers, and a save made at that firing counts from the next iteration. Every rank should
// create it with the same options (the stop agrees whatever the budgets; the number of values,
// 1 or 3 with safety, is checked at the start of the run).
//
// Thread safety: not thread-safe; runs on the engine's thread. `clock` must outlive the handler.
//
// Example:
//   auto limit = ember::TimeLimit::Create({.limit_sec = 3600});
//   trainer.On(ember::Events::IterationCompleted(), **limit);
//   ...trainer.Run(...);
//   if ((*limit)->stopped()) { save a checkpoint; report "TimeLimit" }
//
// Example (Slurm, stopping in time to save):
//   auto limit = ember::TimeLimit::Create(
//       {.budget = ember::TimeLimitOptions::Budget::kSlurmJobEnd, .safety = true,
//        .final_save_reserve_sec = 60, .save_time = [&] { return ckpt->blocked_time(); }});
#ifndef EMBER_HANDLERS_TIME_LIMIT_H_
#define EMBER_HANDLERS_TIME_LIMIT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "engine/synchronized_handler.h"

namespace ember {

struct TimeLimitOptions {
  // ignite's limit_sec (its default, 8 hours): a positive whole number of seconds.
  int64_t limit_sec = 28800;
  enum class Budget { kLimitSec, kSlurmJobEnd } budget = Budget::kLimitSec;
  // Stop when elapsed + next step + save reserve would exceed the budget (see above).
  bool safety = false;
  // The least save reserve, in seconds (finite, >= 0); a longer measured save replaces it.
  double final_save_reserve_sec = 0.0;
  // Cumulative time spent saving (Checkpoint::blocked_time()); optional.
  std::function<absl::Duration()> save_time;
  // Monotonic time source (not owned); null: RealClock().
  Clock* clock = nullptr;
  // kSlurmJobEnd: the wall clock (default absl::Now) and the environment (default ::getenv;
  // nullopt: unset), injectable for tests.
  std::function<absl::Time()> wall_clock;
  std::function<std::optional<std::string>(const std::string&)> getenv;
};

class TimeLimit final : public SynchronizedHandler {
 public:
  // What engine.outcome().terminated_by says when this handler stopped the run.
  static constexpr char kName[] = "TimeLimit";
  static constexpr char kSlurmEndVariable[] = "SLURM_JOB_END_TIME";

  static absl::StatusOr<std::unique_ptr<TimeLimit>> Create(TimeLimitOptions options = {});

  // SLURM_JOB_END_TIME's value as a time: digits only (no sign, space, fraction or exponent),
  // a positive Unix time in seconds that fits in 64 bits; kInvalidArgument naming it otherwise.
  static absl::StatusOr<absl::Time> ParseSlurmEndTime(const std::string& value);

  // The budget in seconds from creation (limit_sec, or the time left in the Slurm job).
  double budget_seconds() const { return budget_; }
  // This rank's time since creation.
  double elapsed_seconds() const;

  // How the run was stopped: the agreed values at the call that terminated the engine.
  struct Stop {
    int64_t epoch = 0;
    int64_t iteration = 0;
    double elapsed_sec = 0;   // the furthest rank's elapsed time, against this rank's budget
    double budget_sec = 0;
    double next_step_sec = 0;     // safety mode: the agreed step estimate
    double save_reserve_sec = 0;  // safety mode: the reserve used
    bool save_measured = false;   // whether this rank had measured a save
    bool early = false;           // stopped by the safety margin before the budget was spent
  };
  // Whether this handler terminated the engine (the same on every rank).
  bool stopped() const { return stop_.has_value(); }
  // The last stop, if any.
  const std::optional<Stop>& stop() const { return stop_; }
  // Safety mode: this rank's measurements so far (the agreed ones are in stop()).
  double max_step_seconds() const { return max_step_; }
  std::optional<double> max_save_seconds() const { return max_save_; }

  size_t num_values() const override { return options_.safety ? 3 : 1; }
  dist::Reduction reduction(size_t) const override { return dist::Reduction::kMax; }
  absl::Status Propose(Engine& engine, absl::Span<double> values) override;
  absl::Status Decide(Engine& engine, const Agreement& agreement) override;
  bool proposes_in_step() const override { return true; }

 private:
  TimeLimit(TimeLimitOptions options, Clock* clock, double budget)
      : options_(std::move(options)), clock_(clock), start_(clock->NowSeconds()), budget_(budget) {}

  TimeLimitOptions options_;
  Clock* clock_;
  double start_;
  double budget_;
  std::optional<double> last_check_;
  double last_save_total_ = 0;
  double max_step_ = 0;
  std::optional<double> max_save_;
  std::optional<Stop> stop_;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_TIME_LIMIT_H_
