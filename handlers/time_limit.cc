#include "handlers/time_limit.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/log.h"

namespace ember {
namespace {

std::optional<std::string> GetEnv(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

}  // namespace

absl::StatusOr<absl::Time> TimeLimit::ParseSlurmEndTime(const std::string& value) {
  auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TimeLimit: ", kSlurmEndVariable, " must be the job's end as a Unix time in whole seconds (digits only), got '",
        value, "' (", why, ")"));
  };
  if (value.empty()) return bad("empty");
  for (char c : value) {
    if (c < '0' || c > '9') return bad("not a plain decimal number");
  }
  int64_t seconds = 0;
  if (!absl::SimpleAtoi(value, &seconds)) return bad("too large");
  if (seconds <= 0) return bad("not a positive time");
  return absl::FromUnixSeconds(seconds);
}

absl::StatusOr<std::unique_ptr<TimeLimit>> TimeLimit::Create(TimeLimitOptions o) {
  if (o.budget != TimeLimitOptions::Budget::kLimitSec && o.budget != TimeLimitOptions::Budget::kSlurmJobEnd) {
    return absl::InvalidArgumentError(absl::StrCat("TimeLimit: budget must be kLimitSec or kSlurmJobEnd, got ",
                                                   static_cast<int>(o.budget)));
  }
  if (o.budget == TimeLimitOptions::Budget::kLimitSec && o.limit_sec <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument limit_sec should be a positive integer. (TimeLimit: limit_sec must be >= 1, got ", o.limit_sec, ")"));
  }
  if (!std::isfinite(o.final_save_reserve_sec) || o.final_save_reserve_sec < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TimeLimit: final_save_reserve_sec must be a finite number of seconds >= 0, got ", o.final_save_reserve_sec));
  }
  Clock* clock = o.clock != nullptr ? o.clock : RealClock();
  double budget = static_cast<double>(o.limit_sec);
  if (o.budget == TimeLimitOptions::Budget::kSlurmJobEnd) {
    const std::optional<std::string> end = o.getenv ? o.getenv(kSlurmEndVariable) : GetEnv(kSlurmEndVariable);
    if (!end) {
      const std::optional<std::string> job = o.getenv ? o.getenv("SLURM_JOB_ID") : GetEnv("SLURM_JOB_ID");
      return absl::NotFoundError(absl::StrCat(
          "TimeLimit: the Slurm budget needs ", kSlurmEndVariable, " (the job's end, a Unix time), which is not set (",
          job ? absl::StrCat("SLURM_JOB_ID is '", *job, "': this Slurm does not set it in the job's environment")
              : "SLURM_JOB_ID is not set either: not a Slurm job",
          "); give limit_sec with budget kLimitSec instead"));
    }
    absl::StatusOr<absl::Time> end_time = ParseSlurmEndTime(*end);
    if (!end_time.ok()) return end_time.status();
    const absl::Time now = o.wall_clock ? o.wall_clock() : absl::Now();
    budget = absl::ToDoubleSeconds(*end_time - now);
    if (!(budget > 0)) {
      return absl::FailedPreconditionError(absl::StrCat("TimeLimit: the Slurm job's end (", kSlurmEndVariable, "=",
                                                        *end, ") is already past: now is ",
                                                        absl::ToUnixSeconds(now)));
    }
  }
  return std::unique_ptr<TimeLimit>(new TimeLimit(std::move(o), clock, budget));
}

double TimeLimit::elapsed_seconds() const { return clock_->NowSeconds() - start_; }

absl::Status TimeLimit::Propose(Engine&, absl::Span<double> values) {
  const double now = clock_->NowSeconds();
  // elapsed - budget > 0 exactly when elapsed > budget (IEEE subtraction of finite doubles).
  values[0] = (now - start_) - budget_;
  if (!options_.safety) return absl::OkStatus();
  const double saved = options_.save_time ? absl::ToDoubleSeconds(options_.save_time()) : 0.0;
  if (last_check_) {
    const double save = std::max(0.0, saved - last_save_total_);
    if (save > 0) max_save_ = std::max(max_save_.value_or(0.0), save);
    max_step_ = std::max(max_step_, (now - *last_check_) - save);
  }
  last_check_ = now;
  last_save_total_ = saved;
  values[1] = max_step_;
  // The larger of the reserve given and the longest save measured (a measured save never lowers
  // the reserve: an asynchronous checkpoint's blocked time is far below the final save's), reduced
  // with MAX like the others, so that ranks with different reserves still decide on one number.
  values[2] = std::max(options_.final_save_reserve_sec, max_save_.value_or(0.0));
  return absl::OkStatus();
}

absl::Status TimeLimit::Decide(Engine& engine, const Agreement& agreement) {
  const double overrun = agreement.value(0);
  Stop s;
  s.budget_sec = budget_;
  s.elapsed_sec = budget_ + overrun;
  bool over = overrun > 0;
  if (options_.safety) {
    s.next_step_sec = agreement.value(1);
    s.save_reserve_sec = agreement.value(2);
    s.save_measured = max_save_.has_value();
    if (!over && overrun + s.next_step_sec + s.save_reserve_sec > 0) {
      over = true;
      s.early = true;
    }
  }
  if (!over) return absl::OkStatus();
  s.epoch = engine.state().epoch;
  s.iteration = engine.state().iteration;
  const std::string where = absl::StrFormat("at epoch %d, iteration %d", s.epoch, s.iteration);
  if (s.early) {
    Log(LogSeverity::kInfo,
        absl::StrFormat("TimeLimit: Stopping before the time limit: elapsed %.3f s + next step %.3f s + final "
                        "save %.3f s (%s) would exceed the budget of %.3f sec. Stop training (%s)",
                        s.elapsed_sec, s.next_step_sec, s.save_reserve_sec,
                        s.save_measured ? "the reserve or the longest save measured" : "the reserve given", s.budget_sec, where));
  } else {
    Log(LogSeverity::kInfo,
        absl::StrFormat("TimeLimit: Reached the time limit: %s sec. Stop training (elapsed %.3f s, %s)",
                        options_.budget == TimeLimitOptions::Budget::kLimitSec
                            ? absl::StrCat(options_.limit_sec)
                            : absl::StrFormat("%.3f (until %s)", budget_, kSlurmEndVariable),
                        s.elapsed_sec, where));
  }
  stop_ = s;
  engine.TerminateBy(kName);
  return absl::OkStatus();
}

}  // namespace ember
