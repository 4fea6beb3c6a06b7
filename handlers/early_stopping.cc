#include "handlers/early_stopping.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/type_name.h"
#include "distributed/settings_agreement.h"

namespace ember {

absl::StatusOr<std::unique_ptr<EarlyStopping>> EarlyStopping::Create(EarlyStoppingOptions o,
                                                                     Engine& trainer) {
  if (o.patience < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument patience should be positive integer. (EarlyStopping: patience must be >= 1, got ",
        o.patience, ")"));
  }
  if (!(o.min_delta >= 0.0) || !std::isfinite(o.min_delta)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument min_delta should not be a negative number. (EarlyStopping: min_delta must be a "
        "finite number >= 0, got ",
        o.min_delta, ")"));
  }
  if (!o.score_function && o.score_name.empty()) {
    return absl::InvalidArgumentError(
        "EarlyStopping: give a score_function or a score_name (a key of state().metrics)");
  }
  if (o.score_function && !o.score_name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EarlyStopping: give either a score_function or a score_name, not both (score_name '",
        o.score_name, "')"));
  }
  if (o.reduction != dist::Reduction::kMean && o.reduction != dist::Reduction::kMin &&
      o.reduction != dist::Reduction::kMax) {
    return absl::InvalidArgumentError(absl::StrCat("EarlyStopping: reduction must be MEAN, MIN or MAX, got ",
                                                   dist::ReductionName(o.reduction)));
  }
  for (const auto& [name, t] : {std::pair{"stopping_threshold", o.stopping_threshold},
                                std::pair{"divergence_threshold", o.divergence_threshold}}) {
    if (t && !std::isfinite(*t)) {
      return absl::InvalidArgumentError(
          absl::StrCat("EarlyStopping: ", name, " must be finite, got ", *t));
    }
  }
  return std::unique_ptr<EarlyStopping>(new EarlyStopping(std::move(o), trainer));
}

void EarlyStopping::Reset() {
  counter_ = 0;
  best_.reset();
  last_.reset();
  reason_ = StopReason::kNone;
}

bool EarlyStopping::Better(double a, double b) const {
  return options_.mode == EarlyStoppingOptions::Mode::kMax ? a > b : a < b;
}

std::string EarlyStopping::label() const {
  std::vector<std::string> parts;
  if (options_.score_function) {
    parts.push_back("score_function=" + CallableName<float (*)(const Engine&), int (*)(const Engine&),
                                                     int64_t (*)(const Engine&)>(options_.score_function));
  } else if (!options_.score_name.empty()) {
    parts.push_back("score=" + options_.score_name);
  }
  // The options that decide when to stop, those not at their defaults (so that two ranks with
  // another patience are told apart at the start of the run, and the usual label stays short).
  const EarlyStoppingOptions defaults;
  if (options_.patience != defaults.patience) parts.push_back(absl::StrCat("patience=", options_.patience));
  if (options_.min_delta != defaults.min_delta) parts.push_back("min_delta=" + dist::CanonicalDouble(options_.min_delta));
  if (options_.cumulative_delta) parts.push_back("cumulative_delta=true");
  if (options_.mode != defaults.mode) parts.push_back("mode=min");
  if (options_.threshold_mode != defaults.threshold_mode) parts.push_back("threshold_mode=rel");
  if (options_.stopping_threshold) parts.push_back("stopping_threshold=" + dist::CanonicalDouble(*options_.stopping_threshold));
  if (options_.divergence_threshold) {
    parts.push_back("divergence_threshold=" + dist::CanonicalDouble(*options_.divergence_threshold));
  }
  if (options_.check_finite) parts.push_back("check_finite=true");
  return absl::StrJoin(parts, ", ");
}

absl::Status EarlyStopping::Propose(Engine& engine, absl::Span<double> values) {
  if (options_.score_function) {
    values[0] = options_.score_function(engine);
    return absl::OkStatus();
  }
  auto it = engine.state().metrics.find(options_.score_name);
  if (it == engine.state().metrics.end()) {
    return absl::NotFoundError(absl::StrCat("EarlyStopping: metric '", options_.score_name,
                                            "' is not in state().metrics"));
  }
  values[0] = it->second;
  return absl::OkStatus();
}

absl::Status EarlyStopping::Decide(Engine&, const Agreement& agreement) {
  const double score = agreement.value(0);
  last_ = score;
  const bool max = options_.mode == EarlyStoppingOptions::Mode::kMax;
  auto stop = [&](StopReason why) {
    if (reason_ == StopReason::kNone) reason_ = why;
    trainer_->TerminateBy(kName);
  };
  if (!std::isfinite(score)) {
    if (options_.check_finite) {
      stop(StopReason::kNonFinite);
      return absl::OkStatus();
    }
  }
  if (options_.stopping_threshold && !std::isnan(score) &&
      (max ? score >= *options_.stopping_threshold : score <= *options_.stopping_threshold)) {
    stop(StopReason::kStoppingThreshold);
  }
  if (options_.divergence_threshold && !std::isnan(score) &&
      (max ? score < *options_.divergence_threshold : score > *options_.divergence_threshold)) {
    stop(StopReason::kDivergence);
  }
  // Ember: a NaN score is never an improvement; it counts toward patience and leaves best alone.
  if (std::isnan(score)) {
    ++counter_;
    if (counter_ >= options_.patience) stop(StopReason::kPatience);
    return absl::OkStatus();
  }
  if (!best_) {
    best_ = score;
    return absl::OkStatus();
  }
  const double delta = options_.min_delta;
  double target;
  if (options_.threshold_mode == EarlyStoppingOptions::ThresholdMode::kRel) {
    target = max ? *best_ * (1 + delta) : *best_ * (1 - delta);
  } else {
    target = max ? *best_ + delta : *best_ - delta;
  }
  if (!Better(score, target)) {
    if (!options_.cumulative_delta && Better(score, *best_)) best_ = score;
    ++counter_;
    if (counter_ >= options_.patience) stop(StopReason::kPatience);
  } else {
    best_ = score;
    counter_ = 0;
  }
  return absl::OkStatus();
}

Value EarlyStopping::StateDict() const {
  Value d = Value::Dict(/*ordered=*/true);
  d.Set("counter", counter_);
  d.Set("best_score", best_ ? Value(*best_) : Value());
  d.Set("threshold_mode",
        options_.threshold_mode == EarlyStoppingOptions::ThresholdMode::kAbs ? "abs" : "rel");
  return d;
}

absl::Status EarlyStopping::LoadStateDict(const Value& state) {
  std::string keys;
  for (const Value& k : state.keys()) absl::StrAppend(&keys, keys.empty() ? "" : ", ", k.DebugString());
  for (const char* key : {"counter", "best_score"}) {
    if (!state.is_dict() || state.Find(key) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("Required state attribute '", key,
                                                     "' is absent in provided state_dict 'dict_keys([",
                                                     keys, "])'"));
    }
  }
  const Value& counter = *state.Find("counter");
  const Value& best = *state.Find("best_score");
  if (!counter.is_int() || counter.as_int() < 0 || counter.as_int() > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("EarlyStopping state: 'counter' must be an integer >= 0, found ",
                                                   counter.DebugString()));
  }
  if (!best.is_none() && !best.is_number()) {
    return absl::InvalidArgumentError("EarlyStopping state: 'best_score' must be a number or None");
  }
  counter_ = static_cast<int>(counter.as_int());
  best_ = best.is_none() ? std::nullopt : std::optional<double>(best.as_double());
  return absl::OkStatus();
}

}  // namespace ember
