// interop_tool write FILE   writes the recipe matrix with Ember's writer
// interop_tool write-zip64 FILE   the same with zip64 records (as archives over 4 GiB have)
// interop_tool check FILE   reads a file written by Python's torch.save and checks it
// interop_tool expect-error FILE SUBSTRING   reading FILE must fail with SUBSTRING in the message
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>

#include "handlers/checkpoint/stateful.h"
#include "handlers/serialization/torch_save.h"
#include "handlers/serialization/value.h"
#include "tests/handlers/interop_recipe.h"

namespace ember {
namespace {

int failures = 0;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++failures;
  }
}

Value Matrix() {
  Value m = Value::Dict();
  for (const auto& [name, dtype] : testing::RecipeDtypes()) {
    m.Set(name, testing::RecipeTensor(dtype, {3, 4}));
  }
  torch::Tensor base = testing::RecipeTensor(torch::kFloat32, {3, 4});
  m.Set("base", base);
  m.Set("transposed", base.t());
  m.Set("narrow", base.narrow(0, 1, 2));
  m.Set("strided", base.slice(1, 0, 4, 2));
  m.Set("scalar0d", torch::tensor(2.5, torch::kFloat32));
  m.Set("empty", torch::zeros({0, 3}, torch::kFloat32));
  m.Set("high_rank", testing::RecipeTensor(torch::kFloat64, {2, 1, 3, 1, 2}));
  Value nested = Value::Dict();
  nested.Set("list", Value::List({1, 2.5, "s", Value(), true}));
  nested.Set("tuple", Value::Tuple({1, Value::Tuple({2, 3})}));
  nested.Set("big", int64_t{1} << 40);
  nested.Set("neg", -5);
  nested.Set("negbig", -(int64_t{1} << 40));
  nested.Set("int32min", int64_t{-2147483648});
  nested.Set("nan", std::numeric_limits<double>::quiet_NaN());
  nested.Set("inf", std::numeric_limits<double>::infinity());
  nested.Set("unicode", "h\xc3\xa9llo \xe2\x9c\x93");
  Value int_keys = Value::Dict();
  int_keys.Set(0, "zero");
  int_keys.Set(7, "seven");
  nested.Set("int_keys", int_keys);
  m.Set("nested", nested);
  m.Set("model", ModuleStateDict(*testing::RecipeModel()));
  return m;
}

int Write(const std::string& path, bool zip64) {
  std::string bytes;
  absl::Status s = serialization_internal::WriteTorchSaveImpl(
      Matrix(),
      [&](const void* d, size_t n) {
        bytes.append(static_cast<const char*>(d), n);
        return absl::OkStatus();
      },
      zip64);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::ofstream(path, std::ios::binary) << bytes;
  return 0;
}

const torch::Tensor* TensorAt(const Value& d, const std::string& key) {
  const Value* v = d.Find(Value(key));
  return v && v->is_tensor() ? &v->as_tensor() : nullptr;
}

int CheckPython(const std::string& path) {
  absl::StatusOr<Value> loaded = ReadTorchSaveFile(path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  const Value& m = *loaded;
  for (const auto& [name, dtype] : testing::RecipeDtypes()) {
    const torch::Tensor* t = TensorAt(m, name);
    Check(t && TensorsBitwiseEqual(*t, testing::RecipeTensor(dtype, {3, 4})), name);
  }
  torch::Tensor base = testing::RecipeTensor(torch::kFloat32, {3, 4});
  const torch::Tensor* b = TensorAt(m, "base");
  const torch::Tensor* tr = TensorAt(m, "transposed");
  const torch::Tensor* na = TensorAt(m, "narrow");
  const torch::Tensor* st = TensorAt(m, "strided");
  Check(b && TensorsBitwiseEqual(*b, base), "base");
  Check(tr && TensorsBitwiseEqual(*tr, base.t()), "transposed");
  Check(tr && !tr->is_contiguous(), "transposed keeps its strides");
  Check(na && TensorsBitwiseEqual(*na, base.narrow(0, 1, 2)) && na->storage_offset() == 4,
        "narrow keeps its offset");
  Check(st && TensorsBitwiseEqual(*st, base.slice(1, 0, 4, 2)), "strided");
  Check(b && tr && na && b->storage().data() == tr->storage().data() &&
            b->storage().data() == na->storage().data(),
        "views share one storage");
  const torch::Tensor* s0 = TensorAt(m, "scalar0d");
  Check(s0 && s0->dim() == 0 && s0->item<float>() == 2.5f, "scalar0d");
  const torch::Tensor* e = TensorAt(m, "empty");
  Check(e && e->sizes() == torch::IntArrayRef({0, 3}), "empty");
  const Value* nested = m.Find(Value("nested"));
  Check(nested != nullptr, "nested");
  if (nested) {
    Check(*nested->Find(Value("big")) == Value(int64_t{1} << 40), "big int");
    Check(*nested->Find(Value("negbig")) == Value(-(int64_t{1} << 40)), "negative big int");
    Check(nested->Find(Value("nan"))->is_double() && std::isnan(nested->Find(Value("nan"))->as_double()), "nan");
    Check(*nested->Find(Value("unicode")) == Value("h\xc3\xa9llo \xe2\x9c\x93"), "unicode");
    Check(*nested->Find(Value("list")) == Value::List({1, 2.5, "s", Value(), true}), "list");
    Check(*nested->Find(Value("tuple")) == Value::Tuple({1, Value::Tuple({2, 3})}), "tuple");
    Check(*nested->Find(Value("bytes")) == Value(std::string("\x00\x01\xff", 3)), "bytes");
  }
  // A Python nn.Module state_dict (OrderedDict with _metadata) loads strictly into the same model.
  const Value* model_sd = m.Find(Value("model"));
  Check(model_sd && model_sd->ordered(), "model state_dict is an OrderedDict");
  torch::nn::Sequential model(torch::nn::Linear(4, 3), torch::nn::BatchNorm1d(3));
  if (model_sd) {
    absl::Status s = LoadModuleStateDict(*model, *model_sd);
    Check(s.ok(), "LoadModuleStateDict: " + s.ToString());
    Check(ModuleStateDict(*model) == ModuleStateDict(*testing::RecipeModel()), "model values");
  }
  // A Python SGD state_dict (int keys, momentum buffers) loads into a LibTorch SGD.
  const Value* optim_sd = m.Find(Value("optimizer"));
  Check(optim_sd != nullptr, "optimizer");
  if (optim_sd) {
    torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.5));
    absl::Status s = LoadOptimizerStateDict(sgd, *optim_sd);
    Check(s.ok(), "LoadOptimizerStateDict: " + s.ToString());
    auto& opts = static_cast<torch::optim::SGDOptions&>(sgd.param_groups()[0].options());
    Check(opts.lr() == 0.05 && opts.momentum() == 0.9, "optimizer hyper-parameters");
    absl::StatusOr<Value> back = OptimizerStateDict(sgd);
    Check(back.ok() && back->Find(Value("state"))->size() == 4, "momentum buffers restored");
  }
  return failures == 0 ? 0 : 1;
}

int ExpectError(const std::string& path, const std::string& substring) {
  absl::StatusOr<Value> loaded = ReadTorchSaveFile(path);
  if (loaded.ok()) {
    std::fprintf(stderr, "FAIL: %s loaded, expected an error with '%s'\n", path.c_str(), substring.c_str());
    return 1;
  }
  std::string message(loaded.status().message());
  std::printf("%s: %s\n", path.c_str(), message.c_str());
  if (message.find(substring) == std::string::npos || message.find(path) == std::string::npos) {
    std::fprintf(stderr, "FAIL: message does not name the file and '%s'\n", substring.c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace ember

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "write" && argc == 3) return ember::Write(argv[2], /*zip64=*/false);
  if (mode == "write-zip64" && argc == 3) return ember::Write(argv[2], /*zip64=*/true);
  if (mode == "check" && argc == 3) return ember::CheckPython(argv[2]);
  if (mode == "expect-error" && argc == 4) return ember::ExpectError(argv[2], argv[3]);
  std::fprintf(stderr, "usage: interop_tool write|check FILE | expect-error FILE SUBSTRING\n");
  return 2;
}
