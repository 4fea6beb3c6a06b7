#include "tools/models.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ember::tools {

absl::StatusOr<torch::nn::Sequential> BuildModel(const std::string& kind, int64_t features,
                                                 const std::vector<int64_t>& hidden, int64_t classes) {
  torch::nn::Sequential model;
  int64_t in = features;
  if (kind == "cnn") {
    const int64_t side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(features))));
    if (side * side != features || side < 4) {
      return absl::InvalidArgumentError(absl::StrCat("--model=cnn needs square images of at least 4x4, but the data has ",
                                                     features, " features per sample; use --model=mlp"));
    }
    model->push_back(torch::nn::Unflatten(torch::nn::UnflattenOptions(1, {1, side, side})));
    model->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1)));
    model->push_back(torch::nn::ReLU());
    model->push_back(torch::nn::MaxPool2d(2));
    model->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1)));
    model->push_back(torch::nn::ReLU());
    model->push_back(torch::nn::MaxPool2d(2));
    model->push_back(torch::nn::Flatten());
    in = 32 * (side / 4) * (side / 4);
  } else if (kind != "mlp") {
    return absl::InvalidArgumentError(absl::StrCat("--model='", kind, "': allowed: mlp, cnn"));
  }
  for (int64_t h : hidden) {
    model->push_back(torch::nn::Linear(in, h));
    model->push_back(torch::nn::ReLU());
    in = h;
  }
  model->push_back(torch::nn::Linear(in, classes));
  return model;
}

absl::Status SampleCount::Update(const Engine& e, absl::Span<double> sums) {
  sums[0] += static_cast<double>(e.state().output_as<Prediction>()->y.size(0));
  return absl::OkStatus();
}

}  // namespace ember::tools
