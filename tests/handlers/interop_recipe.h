// File: tests/handlers/interop_recipe.h
//
// The deterministic contents that tests/handlers/interop.py builds the same way in Python: the
// two sides save and check each other's files against these, bit for bit. Python's torch and
// this binary use the same Debian libtorch, so the same ops give the same bits.
#ifndef EMBER_TESTS_HANDLERS_INTEROP_RECIPE_H_
#define EMBER_TESTS_HANDLERS_INTEROP_RECIPE_H_

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace ember::testing {

inline std::vector<std::pair<std::string, torch::ScalarType>> RecipeDtypes() {
  return {{"float32", torch::kFloat32}, {"float64", torch::kFloat64}, {"float16", torch::kFloat16},
          {"bfloat16", torch::kBFloat16}, {"int8", torch::kInt8},     {"int16", torch::kInt16},
          {"int32", torch::kInt32},     {"int64", torch::kInt64},     {"uint8", torch::kUInt8},
          {"bool", torch::kBool}};
}

// arange(numel) mapped into the dtype's range, reshaped.
inline torch::Tensor RecipeTensor(torch::ScalarType dtype, std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  torch::Tensor base = torch::arange(numel, torch::kFloat64);
  torch::Tensor t;
  if (dtype == torch::kBool) {
    t = base.remainder(3).eq(0);
  } else if (torch::isFloatingType(dtype)) {
    t = base.mul(0.37).sub(3.0).to(dtype);
  } else if (dtype == torch::kUInt8) {
    t = base.remainder(256).to(dtype);
  } else {
    t = base.sub(static_cast<double>(numel / 2)).to(dtype);
  }
  return t.reshape(shape);
}

// The small network both sides build: Sequential(Linear(4, 3), BatchNorm1d(3)), with every
// parameter and buffer set from the recipe.
inline torch::nn::Sequential RecipeModel() {
  torch::nn::Sequential model(torch::nn::Linear(4, 3), torch::nn::BatchNorm1d(3));
  torch::NoGradGuard no_grad;
  int i = 0;
  for (auto& p : model->named_parameters()) {
    p.value().copy_(RecipeTensor(torch::kFloat32, p.value().sizes().vec()).add(i++));
  }
  for (auto& b : model->named_buffers()) {
    if (b.value().scalar_type() == torch::kInt64) {
      b.value().fill_(7);
    } else {
      b.value().copy_(RecipeTensor(torch::kFloat32, b.value().sizes().vec()).abs().add(i++));
    }
  }
  return model;
}

}  // namespace ember::testing

#endif  // EMBER_TESTS_HANDLERS_INTEROP_RECIPE_H_
