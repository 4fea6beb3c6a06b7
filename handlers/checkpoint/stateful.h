// File: handlers/checkpoint/stateful.h
//
// Conversions between what a checkpoint holds (a Value in PyTorch's state_dict layout) and the
// objects it is taken from: torch::nn::Module parameters and buffers, torch::optim optimizers
// (SGD, Adam, AdamW), the Engine, and user objects through the Stateful interface.
//
// The layouts are Python's, so that a state_dict saved in Python loads here and the reverse:
//   module     OrderedDict("fc1.weight" -> tensor, ...): each module's parameters, then its
//              buffers, then its children's, recursively (nn.Module.state_dict's order).
//   optimizer  {"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]},
//              with SGD's momentum_buffer and Adam's step/exp_avg/exp_avg_sq(/max_exp_avg_sq).
//   engine     {"epoch_length", "max_epochs", "iteration", ...} (Engine::GetStateDict).
// Loading checks keys and shapes and names what does not match, as PyTorch does; values are
// copied into the existing tensors (no autograd), converting dtype where needed.
// Not thread-safe: the objects must not be used by another thread meanwhile.
#ifndef EMBER_HANDLERS_STATEFUL_H_
#define EMBER_HANDLERS_STATEFUL_H_

#include <torch/torch.h>

#include "absl/status/status.h"
#include "engine/engine.h"
#include "handlers/serialization/value.h"

namespace ember {

// A user object that can be checkpointed.
class Stateful {
 public:
  virtual ~Stateful() = default;
  virtual Value StateDict() const = 0;
  virtual absl::Status LoadStateDict(const Value& state) = 0;
};

Value ModuleStateDict(const torch::nn::Module& module);
// strict: the keys must match exactly (PyTorch's "Missing key(s)" / "Unexpected key(s)").
absl::Status LoadModuleStateDict(torch::nn::Module& module, const Value& state, bool strict = true);

// SGD, Adam and AdamW; other optimizers give Unimplemented.
absl::StatusOr<Value> OptimizerStateDict(const torch::optim::Optimizer& optimizer);
absl::Status LoadOptimizerStateDict(torch::optim::Optimizer& optimizer, const Value& state);

Value EngineStateDict(const Engine& engine);
absl::Status LoadEngineStateDict(Engine& engine, const Value& state);

}  // namespace ember

#endif  // EMBER_HANDLERS_STATEFUL_H_
