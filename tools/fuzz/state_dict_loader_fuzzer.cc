// Fuzz target: LoadStateDict of a module, an optimizer (SGD and Adam) and an engine, fed with
// structurally valid checkpoints. The input is a small program that builds a Value tree (dicts,
// lists, tuples, scalars of every kind, tensors of fitting and unfitting shapes) out of the keys
// those loaders look for; the tree goes through torch.save and back, as a checkpoint on disk
// would, and then into every loader. A loader may accept or reject it, but must never crash or
// abort: a wrong type is an error naming the key (handlers/serialization/value.h, checked accessors).
#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/engine.h"
#include "handlers/checkpoint/stateful.h"
#include "handlers/serialization/torch_save.h"
#include "handlers/serialization/value.h"

namespace {

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  uint8_t Byte() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  bool empty() const { return n_ == 0; }

 private:
  const uint8_t* p_;
  size_t n_;
};

const char* const kKeys[] = {"state", "param_groups", "params", "lr", "momentum", "dampening",
                             "weight_decay", "nesterov", "betas", "eps", "amsgrad", "step",
                             "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "weight",
                             "bias", "epoch_length", "max_epochs", "iteration", "epoch", "max_iters"};

ember::Value Build(Reader& in, int depth) {
  const uint8_t op = in.Byte();
  switch (depth > 4 ? op % 8 : op % 12) {
    case 0: return ember::Value();
    case 1: return ember::Value(static_cast<int64_t>(static_cast<int8_t>(in.Byte())));
    case 2: return ember::Value(static_cast<double>(static_cast<int8_t>(in.Byte())) / 4.0);
    case 3: return ember::Value(in.Byte() % 2 == 0);
    case 4: return ember::Value(std::string(kKeys[in.Byte() % std::size(kKeys)]));
    case 5:
    case 6: {
      // Shapes of the model's parameters (4x3, 4) and others.
      static const std::vector<std::vector<int64_t>> shapes = {{4, 3}, {4}, {}, {1}, {3, 4}, {2, 2, 2}, {0}};
      const auto& shape = shapes[in.Byte() % shapes.size()];
      static const torch::ScalarType dtypes[] = {torch::kFloat32, torch::kFloat64, torch::kInt64,
                                                 torch::kBool, torch::kFloat16, torch::kUInt8};
      return ember::Value(torch::ones(shape, torch::TensorOptions().dtype(dtypes[in.Byte() % std::size(dtypes)])));
    }
    case 7: return ember::Value(static_cast<int64_t>(in.Byte() % 4));
    case 8:
    case 9: {
      ember::Value d = ember::Value::Dict();
      const int n = in.Byte() % 6;
      for (int i = 0; i < n && !in.empty(); ++i) {
        const uint8_t k = in.Byte();
        if (k % 5 == 0) {
          d.Set(static_cast<int64_t>(k % 3), Build(in, depth + 1));  // state's integer keys
        } else {
          d.Set(std::string(kKeys[k % std::size(kKeys)]), Build(in, depth + 1));
        }
      }
      return d;
    }
    default: {
      std::vector<ember::Value> items;
      const int n = in.Byte() % 4;
      for (int i = 0; i < n && !in.empty(); ++i) items.push_back(Build(in, depth + 1));
      if (op % 2 == 0) return ember::Value::Tuple(std::move(items));
      ember::Value list = ember::Value::List();
      for (auto& v : items) list.Append(std::move(v));
      return list;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  ember::Value tree = Build(in, 0);
  // Through the file format, as a checkpoint read back from disk.
  absl::StatusOr<std::string> bytes = ember::SerializeTorchSave(tree);
  if (!bytes.ok()) return 0;
  absl::StatusOr<ember::Value> loaded = ember::ReadTorchSave(*bytes, "fuzz.pt");
  if (!loaded.ok()) __builtin_trap();  // what the writer wrote, the reader must read

  torch::nn::Linear model(3, 4);
  (void)ember::LoadModuleStateDict(*model, *loaded, /*strict=*/in.Byte() % 2 == 0);
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  (void)ember::LoadOptimizerStateDict(sgd, *loaded);
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(0.01));
  if (ember::LoadOptimizerStateDict(adam, *loaded).ok()) {
    // An accepted state must be usable: one step.
    model->zero_grad();
    model->forward(torch::ones({2, 3})).sum().backward();
    adam.step();
  }
  ember::Engine engine([](ember::Engine&) {});
  (void)ember::LoadEngineStateDict(engine, *loaded);
  return 0;
}
