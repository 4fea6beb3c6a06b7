#include "handlers/checkpoint/saveable.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ember {

Saveable::Saveable(torch::nn::Module& module)
    : get_([&module]() -> absl::StatusOr<Value> { return ModuleStateDict(module); }),
      set_([&module](const Value& v, bool strict) { return LoadModuleStateDict(module, v, strict); }),
      fenced_(Fenced::kParameters),
      parameters_([&module] { return module.parameters(/*recurse=*/true); }) {}

Saveable::Saveable(torch::optim::Optimizer& optimizer)
    : get_([&optimizer]() { return OptimizerStateDict(optimizer); }),
      set_([&optimizer](const Value& v, bool) { return LoadOptimizerStateDict(optimizer, v); }),
      fenced_(Fenced::kAll) {}

Saveable::Saveable(Engine& engine)
    : get_([&engine]() -> absl::StatusOr<Value> { return EngineStateDict(engine); }),
      set_([&engine](const Value& v, bool) { return LoadEngineStateDict(engine, v); }) {}

Saveable::Saveable(Stateful& stateful)
    : get_([&stateful]() -> absl::StatusOr<Value> { return stateful.StateDict(); }),
      set_([&stateful](const Value& v, bool) { return stateful.LoadStateDict(v); }) {}

Saveable::Saveable(std::function<absl::StatusOr<Value>()> state_dict,
                   std::function<absl::Status(const Value&, bool)> load)
    : get_(std::move(state_dict)), set_(std::move(load)) {}

Saveable::Saveable(std::function<absl::StatusOr<Value>()> state_dict,
                   std::function<absl::Status(const Value&, bool)> load, Fenced fenced)
    : get_(std::move(state_dict)),
      set_(std::move(load)),
      fenced_(fenced == Fenced::kAll ? Fenced::kAll : Fenced::kNothing) {}

absl::Status LoadObjects(const ObjectMap& to_load, const Value& checkpoint, bool strict) {
  if (!checkpoint.is_dict()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Argument checkpoint should be a dictionary (a loaded checkpoint), but given ", checkpoint.kind_name()));
  }
  if (to_load.size() == 1 && checkpoint.Find(to_load[0].first) == nullptr) {
    return to_load[0].second.LoadStateDict(checkpoint, strict);
  }
  for (const auto& [name, object] : to_load) {
    if (checkpoint.Find(name) == nullptr) {
      std::vector<std::string> keys;
      for (const Value& k : checkpoint.keys()) keys.push_back(k.DebugString());
      return absl::InvalidArgumentError(absl::StrCat("Key '", name, "' from to_load is not found in the checkpoint: dict_keys([",
                                                     absl::StrJoin(keys, ", "), "])"));
    }
  }
  for (const auto& [name, object] : to_load) {
    absl::Status s = object.LoadStateDict(*checkpoint.Find(name), strict);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("loading '", name, "': ", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace ember
