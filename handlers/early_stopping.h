// File: handlers/early_stopping.h
//
// EarlyStopping (ignite's, with the newer ignite and Lightning options): stops `trainer` when
// the score has not improved for `patience` calls. Typically attached to an evaluator's
// COMPLETED, with the evaluator run at the trainer's EPOCH_COMPLETED.
//
// Per call (mode max; min mirrors it): the first score becomes `best`. Otherwise the score is an
// improvement when score > best + threshold (abs) or score > best * (1 + threshold) (rel); an
// improvement resets the counter and becomes best; anything else increments the counter (and,
// unless cumulative_delta, raises best to the score when it is higher, as ignite does), and the
// trainer is terminated when counter >= patience. Also: stopping_threshold (stop once the score
// reaches it), divergence_threshold (stop once it is worse than it), check_finite (stop at a
// NaN/inf score).
//
// Ember differs from ignite (DESIGN.md): a NaN score is never an improvement (it counts toward
// patience; ignite makes NaN the best score); invalid arguments fail at Create.
//
// Multi-rank: a SynchronizedHandler. The score is reduced across ranks (MEAN by default; MIN or
// MAX selectable) in the firing's one collective before it is compared, so every rank holds the
// same best score and counter and stops at the same epoch.
//
// Example:
//   auto es = ember::EarlyStopping::Create({.patience = 5, .score_name = "val_acc"}, trainer);
//   evaluator.On(ember::Events::Completed(), *std::move(es));
#ifndef EMBER_HANDLERS_EARLY_STOPPING_H_
#define EMBER_HANDLERS_EARLY_STOPPING_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "engine/synchronized_handler.h"
#include "handlers/checkpoint/stateful.h"

namespace ember {

struct EarlyStoppingOptions {
  int patience = 1;
  // The score: score_function(engine it is attached to), or engine.state().metrics[score_name].
  std::function<double(const Engine&)> score_function;
  std::string score_name;
  double min_delta = 0.0;         // ignite's name for `threshold`
  bool cumulative_delta = false;  // ignite's name for `cumulative`
  enum class Mode { kMax, kMin } mode = Mode::kMax;
  enum class ThresholdMode { kAbs, kRel } threshold_mode = ThresholdMode::kAbs;
  std::optional<double> stopping_threshold;
  std::optional<double> divergence_threshold;
  bool check_finite = false;
  dist::Reduction reduction = dist::Reduction::kMean;  // kMean, kMin or kMax
};

class EarlyStopping : public SynchronizedHandler, public Stateful {
 public:
  // What engine.outcome().terminated_by says when this handler stopped the run.
  static constexpr char kName[] = "EarlyStopping";
  // Why the trainer was stopped.
  enum class StopReason { kNone, kPatience, kStoppingThreshold, kDivergence, kNonFinite };

  static absl::StatusOr<std::unique_ptr<EarlyStopping>> Create(EarlyStoppingOptions options,
                                                               Engine& trainer);

  int counter() const { return counter_; }
  std::optional<double> best_score() const { return best_; }
  StopReason stop_reason() const { return reason_; }
  // The last reduced score it saw.
  std::optional<double> last_score() const { return last_; }
  void Reset();

  // {"counter", "best_score", "threshold_mode"} (ignite 0.5.5's keys).
  Value StateDict() const override;
  absl::Status LoadStateDict(const Value& state) override;

  size_t num_values() const override { return 1; }
  dist::Reduction reduction(size_t) const override { return options_.reduction; }
  absl::Status Propose(Engine& engine, absl::Span<double> values) override;
  absl::Status Decide(Engine& engine, const Agreement& agreement) override;
  // "score=<score_name>", or "score_function=<CallableName>" (base/type_name.h), then the
  // stopping options that differ from their defaults ("score=acc, patience=5, mode=min"): two
  // EarlyStopping handlers on different scores, score functions or options are told apart in the
  // layout the ranks agree on (a rank with another patience fails the run's start agreement).
  std::string label() const override;

 private:
  EarlyStopping(EarlyStoppingOptions options, Engine& trainer)
      : options_(std::move(options)), trainer_(&trainer) {}
  bool Better(double a, double b) const;  // a strictly better than b

  EarlyStoppingOptions options_;
  Engine* trainer_;
  int counter_ = 0;
  std::optional<double> best_;
  std::optional<double> last_;
  StopReason reason_ = StopReason::kNone;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_EARLY_STOPPING_H_
