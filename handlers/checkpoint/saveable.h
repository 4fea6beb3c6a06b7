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
  // A pair of functions; `fenced` (see fenced() below) may be Fenced::kAll when every tensor of
  // the state changes only in optimizer.step() or later (after the snapshot fence), so that a
  // background snapshot copies it on its writer thread; kNothing (the default) copies it at the
  // firing. kParameters is taken as kNothing (there are no module parameters to tell apart).
  enum class Fenced { kNothing, kParameters, kAll };  // see fenced()
  Saveable(std::function<absl::StatusOr<Value>()> state_dict,
           std::function<absl::Status(const Value&, bool strict)> load, Fenced fenced);
  Saveable(std::function<absl::StatusOr<Value>()> state_dict,
           std::function<absl::Status(const Value&, bool strict)> load);

  absl::StatusOr<Value> StateDict() const { return get_(); }
  absl::Status LoadStateDict(const Value& state, bool strict = true) const { return set_(state, strict); }

  // What a background snapshot (checkpoint.h, snapshot_in_background) may copy after the firing,
  // behind the fence (snapshot_fence.h): the tensors of StateDict() that change only in
  // optimizer.step(). kAll: an optimizer (its whole state). kParameters: a module's parameters
  // (parameters() below), not its buffers: BatchNorm's running statistics, and any buffer, may
  // change in a forward. kNothing: an Engine, a Stateful, a pair of functions; their tensors are
  // copied at the firing.
  Fenced fenced() const { return fenced_; }
  // kParameters: the module's parameters, recursively (the live tensors); otherwise empty.
  std::vector<torch::Tensor> parameters() const { return parameters_ ? parameters_() : std::vector<torch::Tensor>(); }

 private:
  std::function<absl::StatusOr<Value>()> get_;
  std::function<absl::Status(const Value&, bool)> set_;
  Fenced fenced_ = Fenced::kNothing;
  std::function<std::vector<torch::Tensor>()> parameters_;
};

using ObjectMap = std::vector<std::pair<std::string, Saveable>>;

absl::Status LoadObjects(const ObjectMap& to_load, const Value& checkpoint, bool strict = true);

}  // namespace ember

#endif  // EMBER_HANDLERS_SAVEABLE_H_
