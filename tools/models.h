// File: tools/models.h
//
// The trainer's models and batches: an MLP, or a small convolutional network over the features
// seen as a square image (--model), and the evaluation's sample count metric.
//
// Example:
//   EMBER_ASSIGN_OR_RETURN(torch::nn::Sequential model, BuildModel("mlp", 784, {256, 128}, 10));
#ifndef EMBER_TOOLS_MODELS_H_
#define EMBER_TOOLS_MODELS_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/engine.h"
#include "handlers/metrics.h"

namespace ember::tools {

// One batch: features [n, F] (float) and class labels [n] (int64).
struct Batch {
  torch::Tensor x, y;
};

// "mlp": Linear+ReLU layers of `hidden` sizes, then a Linear to `classes`. "cnn": two 3x3
// conv+pool blocks over the `features` seen as a square image (at least 4x4), then the same
// layers. Anything else, or a cnn over non-square features, is kInvalidArgument naming the flag.
absl::StatusOr<torch::nn::Sequential> BuildModel(const std::string& kind, int64_t features,
                                                 const std::vector<int64_t>& hidden, int64_t classes);

// The number of held-out samples evaluated, over every rank (its one sum is all-reduced with the
// other metrics). The evaluator's output must be a Prediction.
class SampleCount final : public Metric {
 public:
  size_t num_sums() const override { return 1; }
  absl::Status Update(const Engine& e, absl::Span<double> sums) override;
  double Compute(absl::Span<const double> sums) const override { return sums[0]; }
};

}  // namespace ember::tools

#endif  // EMBER_TOOLS_MODELS_H_
