#include "tools/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"

namespace ember::tools {
namespace {

constexpr char kAllowed[] = "constant, cosine or piecewise:ITERATION=LR,ITERATION=LR,...";

absl::Status Bad(const std::string& text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("--lr_schedule=", text, ": ", why, " (allowed: ", kAllowed, ")"));
}

}  // namespace

absl::StatusOr<LrSchedule> ParseLrSchedule(const std::string& text, int64_t warmup_iters) {
  LrSchedule s;
  if (warmup_iters < 0 || warmup_iters == 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--warmup_iters must be 0 (no warm-up) or >= 2, got ", warmup_iters));
  }
  s.warmup_iters = warmup_iters;
  s.text = text;
  absl::string_view rest = text;
  if (text == "constant") {
    s.kind = LrSchedule::Kind::kConstant;
  } else if (text == "cosine") {
    s.kind = LrSchedule::Kind::kCosine;
  } else if (absl::ConsumePrefix(&rest, "piecewise:")) {
    s.kind = LrSchedule::Kind::kPiecewise;
    if (warmup_iters > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--warmup_iters=", warmup_iters, " does not combine with --lr_schedule=", text,
                       ": put the warm-up in the milestones (e.g. piecewise:0=0,", warmup_iters, "=0.1,...)"));
    }
    // Plain decimals only: SimpleAtoi/SimpleAtod also take signs, spaces and "0x10".
    auto plain = [](absl::string_view t, bool fraction) {
      if (t.empty()) return false;
      for (char c : t) {
        if (!(absl::ascii_isdigit(c) || (fraction && (c == '.' || c == 'e' || c == 'E' || c == '-')))) return false;
      }
      return absl::ascii_isdigit(t[0]) || t[0] == '.';
    };
    for (absl::string_view pair : absl::StrSplit(rest, ',')) {
      std::vector<absl::string_view> parts = absl::StrSplit(pair, '=');
      int64_t iteration = 0;
      double value = 0;
      if (parts.size() == 2 && absl::StartsWith(parts[0], "-") && absl::SimpleAtoi(parts[0], &iteration)) {
        return Bad(text, absl::StrCat("iteration ", iteration, " is negative"));
      }
      if (parts.size() == 2 && absl::StartsWith(parts[1], "-") && absl::SimpleAtod(parts[1], &value)) {
        return Bad(text, absl::StrCat("lr ", parts[1], " at iteration ", parts[0], " must be finite and >= 0"));
      }
      if (parts.size() != 2 || !plain(parts[0], false) || !plain(parts[1], true) ||
          !absl::SimpleAtoi(parts[0], &iteration) || !absl::SimpleAtod(parts[1], &value)) {
        return Bad(text, absl::StrCat("'", pair, "' is not ITERATION=LR (a whole iteration >= 0, a decimal lr)"));
      }
      if (!(value >= 0) || !std::isfinite(value)) {
        return Bad(text, absl::StrCat("lr ", parts[1], " at iteration ", iteration, " must be finite and >= 0"));
      }
      if (!s.milestones.empty() && iteration < s.milestones.back().first) {
        return Bad(text, absl::StrCat("iteration ", iteration, " comes after ", s.milestones.back().first,
                                      " (milestones must not decrease)"));
      }
      s.milestones.emplace_back(iteration, value);  // the metrics' iteration; BuildLrScheduler makes it an event
    }
  } else {
    return Bad(text, "unknown schedule");
  }
  return s;
}

std::string LrSchedule::Describe(int64_t total_iterations) const {
  return absl::StrCat("--lr_schedule=", text, warmup_iters > 0 ? absl::StrCat(" --warmup_iters=", warmup_iters) : "",
                      kind == Kind::kCosine ? absl::StrCat(" over ", total_iterations, " iterations") : "");
}

absl::StatusOr<std::unique_ptr<ParamScheduler>> BuildLrScheduler(const LrSchedule& schedule,
                                                                 torch::optim::Optimizer& optimizer, double lr,
                                                                 int64_t total_iterations) {
  std::unique_ptr<ParamScheduler> made;
  switch (schedule.kind) {
    case LrSchedule::Kind::kConstant: {
      if (schedule.warmup_iters == 0) return made;
      // Event e sets iteration e + 1's lr: 0 at iteration 1, --lr at iteration warmup_iters (as the
      // cosine's warm-up).
      EMBER_ASSIGN_OR_RETURN(
          made, PiecewiseLinear::Create(optimizer, {.param_name = "lr",
                                                    .milestones_values = {{0, 0.0}, {schedule.warmup_iters - 1, lr}}}));
      return made;
    }
    case LrSchedule::Kind::kPiecewise: {
      // Milestones name the iteration the metrics report (1-based); the scheduler counts events
      // from 0 (event e sets iteration e + 1's lr).
      std::vector<std::pair<int64_t, double>> events;
      for (const auto& [iteration, value] : schedule.milestones) events.emplace_back(std::max<int64_t>(iteration, 1) - 1, value);
      EMBER_ASSIGN_OR_RETURN(made, PiecewiseLinear::Create(optimizer, {.param_name = "lr", .milestones_values = events}));
      return made;
    }
    case LrSchedule::Kind::kCosine: {
      // The warm-up's last event is the cosine's first (--lr at iteration warmup_iters), so the
      // cosine spans the rest of the run and never restarts within it.
      const int64_t cycle = total_iterations - std::max<int64_t>(0, schedule.warmup_iters - 1);
      if (cycle < 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--lr_schedule=cosine", schedule.warmup_iters > 0 ? absl::StrCat(" --warmup_iters=", schedule.warmup_iters) : "",
            ": the run has ", total_iterations, " iterations (--epochs x the epoch length), which leaves ", cycle,
            " for the cosine after the warm-up (it needs >= 2: more --epochs or fewer --warmup_iters)"));
      }
      EMBER_ASSIGN_OR_RETURN(
          std::unique_ptr<CosineAnnealingScheduler> cosine,
          CosineAnnealingScheduler::Create(
              optimizer, {.param_name = "lr", .start_value = lr, .end_value = 0.0, .cycle_size = cycle}));
      if (schedule.warmup_iters == 0) return std::unique_ptr<ParamScheduler>(std::move(cosine));
      EMBER_ASSIGN_OR_RETURN(made, CreateLrSchedulerWithWarmup(std::move(cosine),
                                                               {.warmup_start_value = 0.0,
                                                                .warmup_duration = schedule.warmup_iters,
                                                                .warmup_end_value = lr}));
      return made;
    }
  }
  return made;
}

}  // namespace ember::tools
