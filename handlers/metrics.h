// File: handlers/metrics.h
//
// Metrics (ignite's Accuracy, Loss, Average and the Metric protocol), correct on many ranks with
// one collective: each metric accumulates a few sums locally at every ITERATION_COMPLETED, and at
// COMPLETED every metric of a Metrics set is all-reduced together (one all-reduce of all their
// sums, SUM) and computed into engine.state().metrics[name], the same value on every rank.
// Started resets them. Attach the Metrics before the handlers that read state().metrics at
// COMPLETED (EarlyStopping, ModelCheckpoint), as in ignite.
//
// The evaluator's step returns an ember::Prediction {y_pred, y} (what ignite's output_transform
// gives its metrics):
//   Accuracy   y_pred [N, C] scores (argmax) or [N] 0/1 predictions (rounded); correct / samples
//   Loss(fn)   fn(y_pred, y) is the batch mean; the result is the sample-weighted mean
//   Average(f) the mean over iterations of f(engine) (e.g. the step's own loss)
// Your own metric: subclass Metric (num_sums, Update adding to its sums, Compute from the global
// sums). A step that returns something else than a Prediction is an error naming the metric.
//
// The collective is the engine's communicator with its collective timeout; an error fails the
// run at COMPLETED on every rank. It is identified (issue 23): the sums travel in the fixed-size
// slots of a dist::Consensus agreement whose header carries the set's layout (each metric's name,
// type and number of sums, in order), checked on every rank before any sum is used. A rank whose
// Metrics differ (other metrics, another order, another count) fails every rank with
// kFailedPrecondition naming each rank's set ("rank 0 ... Metrics at COMPLETED: a (Const, 2
// sums), b (Const, 2 sums); rank 1 ... b (Const, 2 sums), a (Const, 2 sums)") instead of summing
// one metric's sums into another's. Still one collective: an all-gather of 24 doubles per rank
// (up to 19 sums; more take a second exchange after the headers agreed), summed locally in rank
// order.
//
// Example:
//   ember::Metrics metrics;
//   metrics.Add("accuracy", ember::Accuracy()).Add("loss", ember::Loss(cross_entropy));
//   EMBER_RETURN_IF_ERROR(metrics.Attach(evaluator));
#ifndef EMBER_HANDLERS_METRICS_H_
#define EMBER_HANDLERS_METRICS_H_

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "distributed/consensus.h"
#include "engine/engine.h"

namespace ember {

// What an evaluator's step returns for Accuracy and Loss.
struct Prediction {
  torch::Tensor y_pred;
  torch::Tensor y;
};

class Metric {
 public:
  virtual ~Metric() = default;
  // Number of local accumulators (all start at 0 at STARTED and are summed across ranks).
  virtual size_t num_sums() const = 0;
  // Adds this iteration's contribution to `sums`.
  virtual absl::Status Update(const Engine& engine, absl::Span<double> sums) = 0;
  // The metric from the sums of every rank.
  virtual double Compute(absl::Span<const double> sums) const = 0;
};

class Accuracy final : public Metric {
 public:
  size_t num_sums() const override { return 2; }  // correct, samples
  absl::Status Update(const Engine& engine, absl::Span<double> sums) override;
  double Compute(absl::Span<const double> sums) const override;
};

class Loss final : public Metric {
 public:
  using Fn = std::function<torch::Tensor(const torch::Tensor& y_pred, const torch::Tensor& y)>;
  explicit Loss(Fn fn) : fn_(std::move(fn)) {}
  size_t num_sums() const override { return 2; }  // sum of batch mean x batch size, samples
  absl::Status Update(const Engine& engine, absl::Span<double> sums) override;
  double Compute(absl::Span<const double> sums) const override;

 private:
  Fn fn_;
};

class Average final : public Metric {
 public:
  explicit Average(std::function<double(const Engine&)> value) : value_(std::move(value)) {}
  size_t num_sums() const override { return 2; }  // sum, iterations
  absl::Status Update(const Engine& engine, absl::Span<double> sums) override;
  double Compute(absl::Span<const double> sums) const override;

 private:
  std::function<double(const Engine&)> value_;
};

// A set of metrics reduced together. Must outlive the engine's runs.
class Metrics {
 public:
  template <typename M>
  Metrics& Add(std::string name, M metric) {
    metrics_.push_back({std::move(name), std::make_unique<M>(std::move(metric))});
    return *this;
  }
  Metrics& Add(std::string name, std::unique_ptr<Metric> metric) {
    metrics_.push_back({std::move(name), std::move(metric)});
    return *this;
  }
  // Registers reset (STARTED), update (ITERATION_COMPLETED) and compute (COMPLETED).
  absl::Status Attach(Engine& engine);
  // This rank's sums (for tests and custom reporting).
  const std::vector<double>& local_sums() const { return local_; }

 private:
  struct Entry {
    std::string name;
    std::unique_ptr<Metric> metric;
    size_t offset = 0;
  };
  absl::Status Complete(Engine& engine);
  std::string Describe() const;
  std::vector<Entry> metrics_;
  std::vector<double> local_;
  std::vector<double> global_;
  // The identity-checked exchange of the sums (one collective per COMPLETED, as before).
  std::unique_ptr<dist::Consensus> consensus_;
  std::vector<dist::Reduction> ops_;
  std::vector<double> per_rank_;
  uint64_t layout_ = 0;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_METRICS_H_
