// File: handlers/checkpoint/saveable.h
//
// Saveable: anything with a state_dict that a checkpoint can hold: a torch module (or module
// holder), an optimizer, an Engine, a Stateful handler, or a pair of functions of your own.
// ObjectMap names them, in order: {{"model", model}, {"optimizer", optimizer}}.
//
// LoadObjects is ignite's Checkpoint.load_objects: one object whose key is not in the checkpoint
// takes the whole checkpoint; otherwise key by key (extra checkpoint keys are ignored, a missing
// one is kInvalidArgument listing the checkpoint's keys). `strict` applies to modules. An object's
// own error is returned prefixed with its name.
//
// A Saveable refers to its object; the object must outlive it.
//
// Example:
//   ember::ObjectMap objects{{"model", model}, {"optimizer", optimizer}, {"trainer", trainer}};
//   EMBER_RETURN_IF_ERROR(ember::LoadObjects(objects, *ember::ReadTorchSaveFile(path)));
#ifndef EMBER_HANDLERS_SAVEABLE_H_
#define EMBER_HANDLERS_SAVEABLE_H_

#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "handlers/serialization/value.h"
#include "handlers/checkpoint/stateful.h"

namespace ember {

// Something with a state_dict: a module, an optimizer, an engine, or a Stateful.
class Saveable {
 public:
  Saveable(torch::nn::Module& module);  // NOLINT: implicit by design
  template <typename M>
  Saveable(torch::nn::ModuleHolder<M>& holder) : Saveable(*holder) {}  // NOLINT
  Saveable(torch::optim::Optimizer& optimizer);  // NOLINT
  Saveable(Engine& engine);                      // NOLINT
  Saveable(Stateful& stateful);                  // NOLINT
  Saveable(std::function<absl::StatusOr<Value>()> state_dict,
           std::function<absl::Status(const Value&, bool strict)> load);

  absl::StatusOr<Value> StateDict() const { return get_(); }
  absl::Status LoadStateDict(const Value& state, bool strict = true) const { return set_(state, strict); }

 private:
  std::function<absl::StatusOr<Value>()> get_;
  std::function<absl::Status(const Value&, bool)> set_;
};

using ObjectMap = std::vector<std::pair<std::string, Saveable>>;

absl::Status LoadObjects(const ObjectMap& to_load, const Value& checkpoint, bool strict = true);

}  // namespace ember

#endif  // EMBER_HANDLERS_SAVEABLE_H_
