#include "handlers/checkpoint/stateful.h"

#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace ember {
namespace {

void CollectModule(const torch::nn::Module& module, const std::string& prefix, Value& out) {
  for (const auto& p : module.named_parameters(/*recurse=*/false)) {
    out.Set(prefix + p.key(), p.value().detach());
  }
  for (const auto& b : module.named_buffers(/*recurse=*/false)) {
    out.Set(prefix + b.key(), b.value().detach());
  }
  for (const auto& child : module.named_children()) {
    CollectModule(*child.value(), prefix + child.key() + ".", out);
  }
}

void CollectTargets(torch::nn::Module& module, const std::string& prefix,
                    std::vector<std::pair<std::string, torch::Tensor>>& out) {
  for (auto& p : module.named_parameters(/*recurse=*/false)) out.emplace_back(prefix + p.key(), p.value());
  for (auto& b : module.named_buffers(/*recurse=*/false)) out.emplace_back(prefix + b.key(), b.value());
  for (auto& child : module.named_children()) {
    CollectTargets(*child.value(), prefix + child.key() + ".", out);
  }
}

// The key of a parameter's entry in Optimizer::state(). LibTorch 1.13 keys that map by the text of
// the parameter's TensorImpl address (c10::guts::to_string, which streams the pointer); LibTorch
// >= 2.2 keys it by the address itself, as void* (PyTorch PR #108480), and has no
// c10::guts::to_string. The map's own key type decides, so that one source builds against both
// and finds the entries the optimizer's step() made.
using OptimizerStateKey =
    std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;
static_assert(std::is_same_v<OptimizerStateKey, std::string> || std::is_pointer_v<OptimizerStateKey>,
              "Optimizer::state() is keyed by neither a string (LibTorch 1.13) nor a pointer (2.x)");

template <typename Key>
Key StateKeyOf(c10::TensorImpl* impl) {  // a template: only the branch for Key is compiled
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;  // what c10::guts::to_string(impl) was: the streamed pointer
    text << impl;
    return text.str();
  } else {
    return static_cast<Key>(impl);
  }
}

OptimizerStateKey StateKey(const torch::Tensor& p) {
  return StateKeyOf<OptimizerStateKey>(p.unsafeGetTensorImpl());
}

std::string Shape(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

absl::Status CopyInto(torch::Tensor& target, const Value& value, const std::string& what) {
  if (!value.is_tensor()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected a tensor, got ", value.kind_name()));
  }
  const torch::Tensor& source = value.as_tensor();
  if (source.sizes() != target.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat("size mismatch for ", what, ": copying a param with shape ",
                                                   Shape(source), ", the shape in the current model is ",
                                                   Shape(target)));
  }
  torch::NoGradGuard no_grad;
  target.copy_(source);
  return absl::OkStatus();
}

const Value* Get(const Value& dict, const char* key) { return dict.Find(Value(key)); }

double GetDouble(const Value& group, const char* key, double fallback) {
  const Value* v = Get(group, key);
  return v && v->is_number() ? v->as_double() : fallback;
}

bool GetBool(const Value& group, const char* key, bool fallback) {
  const Value* v = Get(group, key);
  return v && v->is_bool() ? v->as_bool() : fallback;
}

// Checks the types of one loaded parameter group and of the per-parameter state it refers to,
// so that loading never aborts on a wrong type: an error names the key and the type found.
absl::Status ValidateGroup(const Value& g, const torch::optim::OptimizerParamGroup& own,
                           const Value& state, size_t gi) {
  const std::string at = absl::StrCat("param_groups[", gi, "]");
  for (const char* key : {"lr", "momentum", "dampening", "weight_decay", "eps"}) {
    if (const Value* v = Get(g, key); v != nullptr) {
      EMBER_RETURN_IF_ERROR(v->ToDouble(absl::StrCat(at, "['", key, "']")).status());
    }
  }
  for (const char* key : {"nesterov", "amsgrad"}) {
    if (const Value* v = Get(g, key); v != nullptr) {
      EMBER_RETURN_IF_ERROR(v->ToBool(absl::StrCat(at, "['", key, "']")).status());
    }
  }
  if (const Value* b = Get(g, "betas"); b != nullptr) {
    if (!b->is_sequence() || b->items().size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("'", at, "['betas']': expected a pair of numbers, found ",
                                                     b->kind_name(), " of ", b->size()));
    }
    for (size_t i = 0; i < 2; ++i) {
      EMBER_RETURN_IF_ERROR(b->items()[i].ToDouble(absl::StrCat(at, "['betas'][", i, "]")).status());
    }
  }
  const Value* params = Get(g, "params");
  for (size_t pi = 0; pi < own.params().size(); ++pi) {
    const Value* s = state.Find(params->items()[pi]);
    if (s == nullptr || !s->is_dict()) continue;
    const std::string where = absl::StrCat("state[", params->items()[pi].as_int(), "]");
    const torch::Tensor& p = own.params()[pi];
    for (const char* key : {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}) {
      const Value* v = Get(*s, key);
      if (v == nullptr || v->is_none()) continue;
      EMBER_ASSIGN_OR_RETURN(torch::Tensor t, v->ToTensor(absl::StrCat(where, "['", key, "']")));
      if (t.sizes() != p.sizes()) {
        return absl::InvalidArgumentError(absl::StrCat("'", where, "['", key, "']': shape ", Shape(t),
                                                       " does not match the parameter's ", Shape(p)));
      }
    }
    if (const Value* step = Get(*s, "step"); step != nullptr) {
      if (step->is_tensor() ? step->as_tensor().numel() != 1 : !step->is_number()) {
        return absl::InvalidArgumentError(absl::StrCat("'", where, "['step']': expected a number or a one-element "
                                                       "tensor, found ", step->kind_name()));
      }
    }
  }
  return absl::OkStatus();
}

// Adam and AdamW share their options and per-parameter state in LibTorch (two sets of types).
template <typename Options>
void SaveAdamOptions(const Options& o, Value& g) {
  g.Set("lr", o.lr());
  g.Set("betas", Value::Tuple({std::get<0>(o.betas()), std::get<1>(o.betas())}));
  g.Set("eps", o.eps());
  g.Set("weight_decay", o.weight_decay());
  g.Set("amsgrad", o.amsgrad());
  g.Set("maximize", false);
  g.Set("foreach", Value());
  g.Set("capturable", false);
}

template <typename Options>
void LoadAdamOptions(const Value& g, Options& o) {
  o.lr(GetDouble(g, "lr", o.lr()));
  o.eps(GetDouble(g, "eps", o.eps()));
  o.weight_decay(GetDouble(g, "weight_decay", o.weight_decay()));
  o.amsgrad(GetBool(g, "amsgrad", o.amsgrad()));
  if (const Value* b = Get(g, "betas"); b && b->is_sequence() && b->items().size() == 2) {
    o.betas({b->items()[0].as_double(), b->items()[1].as_double()});
  }
}

template <typename ParamState>
void SaveAdamState(const ParamState& a, Value& s) {
  s.Set("step", torch::tensor(static_cast<double>(a.step()), torch::kFloat32));
  s.Set("exp_avg", a.exp_avg());
  s.Set("exp_avg_sq", a.exp_avg_sq());
  if (a.max_exp_avg_sq().defined()) s.Set("max_exp_avg_sq", a.max_exp_avg_sq());
}

template <typename ParamState, typename TensorOf>
std::unique_ptr<ParamState> LoadAdamState(int64_t steps, const TensorOf& tensor) {
  auto st = std::make_unique<ParamState>();
  st->step(steps);
  st->exp_avg(tensor("exp_avg"));
  st->exp_avg_sq(tensor("exp_avg_sq"));
  st->max_exp_avg_sq(tensor("max_exp_avg_sq"));
  return st;
}

}  // namespace

Value ModuleStateDict(const torch::nn::Module& module) {
  Value out = Value::Dict(/*ordered=*/true);
  CollectModule(module, "", out);
  return out;
}

static absl::Status LoadModuleStateDictImpl(torch::nn::Module& module, const Value& state, bool strict) {
  if (!state.is_dict()) {
    return absl::InvalidArgumentError(
        absl::StrCat("a module state_dict must be a dict, got ", state.kind_name()));
  }
  std::vector<std::pair<std::string, torch::Tensor>> targets;
  CollectTargets(module, "", targets);
  std::vector<std::string> missing, unexpected;
  for (auto& [name, tensor] : targets) {
    if (state.Find(Value(name)) == nullptr) missing.push_back("\"" + name + "\"");
  }
  for (const Value& key : state.keys()) {
    bool known = false;
    for (const auto& t : targets) known = known || (key.is_string() && key.as_string() == t.first);
    if (!known) unexpected.push_back("\"" + key.DebugString() + "\"");
  }
  if (strict && (!missing.empty() || !unexpected.empty())) {
    std::string message = "Error(s) in loading state_dict:";
    if (!missing.empty()) absl::StrAppend(&message, " Missing key(s) in state_dict: ", absl::StrJoin(missing, ", "), ".");
    if (!unexpected.empty()) absl::StrAppend(&message, " Unexpected key(s) in state_dict: ", absl::StrJoin(unexpected, ", "), ".");
    return absl::InvalidArgumentError(message);
  }
  for (auto& [name, tensor] : targets) {
    if (const Value* v = state.Find(Value(name))) EMBER_RETURN_IF_ERROR(CopyInto(tensor, *v, name));
  }
  return absl::OkStatus();
}

absl::StatusOr<Value> OptimizerStateDict(const torch::optim::Optimizer& optimizer) {
  Value state = Value::Dict();
  Value groups = Value::List();
  int64_t index = 0;
  for (const auto& group : optimizer.param_groups()) {
    Value g = Value::Dict();
    const torch::optim::OptimizerOptions& options = group.options();
    if (const auto* sgd = dynamic_cast<const torch::optim::SGDOptions*>(&options)) {
      g.Set("lr", sgd->lr());
      g.Set("momentum", sgd->momentum());
      g.Set("dampening", sgd->dampening());
      g.Set("weight_decay", sgd->weight_decay());
      g.Set("nesterov", sgd->nesterov());
      g.Set("maximize", false);
      g.Set("foreach", Value());
      g.Set("differentiable", false);
    } else if (const auto* adam = dynamic_cast<const torch::optim::AdamOptions*>(&options)) {
      SaveAdamOptions(*adam, g);
    } else if (const auto* adamw = dynamic_cast<const torch::optim::AdamWOptions*>(&options)) {
      SaveAdamOptions(*adamw, g);
    } else {
      return absl::UnimplementedError(
          "optimizer state_dict: only SGD, Adam and AdamW are supported");
    }
    Value params = Value::List();
    for (const torch::Tensor& p : group.params()) {
      auto it = optimizer.state().find(StateKey(p));
      if (it != optimizer.state().end()) {
        Value s = Value::Dict();
        if (const auto* m = dynamic_cast<const torch::optim::SGDParamState*>(it->second.get())) {
          s.Set("momentum_buffer", m->momentum_buffer().defined() ? Value(m->momentum_buffer()) : Value());
        } else if (const auto* a = dynamic_cast<const torch::optim::AdamParamState*>(it->second.get())) {
          SaveAdamState(*a, s);
        } else if (const auto* w = dynamic_cast<const torch::optim::AdamWParamState*>(it->second.get())) {
          SaveAdamState(*w, s);
        }
        state.Set(index, std::move(s));
      }
      params.Append(index++);
    }
    g.Set("params", std::move(params));
    groups.Append(std::move(g));
  }
  Value out = Value::Dict();
  out.Set("state", std::move(state));
  out.Set("param_groups", std::move(groups));
  return out;
}

static absl::Status LoadOptimizerStateDictImpl(torch::optim::Optimizer& optimizer, const Value& sd) {
  const Value* state = Get(sd, "state");
  const Value* groups = Get(sd, "param_groups");
  if (state == nullptr || !state->is_dict() || groups == nullptr || !groups->is_sequence()) {
    return absl::InvalidArgumentError(
        "an optimizer state_dict needs 'state' (dict) and 'param_groups' (list)");
  }
  auto& own_groups = optimizer.param_groups();
  if (groups->items().size() != own_groups.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "loaded state dict has ", groups->items().size(), " parameter groups, the optimizer has ",
        own_groups.size()));
  }
  // Validate everything before changing anything.
  for (size_t gi = 0; gi < own_groups.size(); ++gi) {
    const Value& g = groups->items()[gi];
    const Value* params = g.is_dict() ? Get(g, "params") : nullptr;
    if (params == nullptr || !params->is_sequence() ||
        params->items().size() != own_groups[gi].params().size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "loaded state dict contains a parameter group that doesn't match the size of the "
          "optimizer's group ", gi));
    }
    for (const Value& p : params->items()) {
      if (!p.is_int()) return absl::InvalidArgumentError("param_groups 'params' must hold ints");
    }
    EMBER_RETURN_IF_ERROR(ValidateGroup(g, own_groups[gi], *state, gi));
  }
  for (size_t gi = 0; gi < own_groups.size(); ++gi) {
    const Value& g = groups->items()[gi];
    auto& group = own_groups[gi];
    torch::optim::OptimizerOptions& options = group.options();
    if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&options)) {
      sgd->lr(GetDouble(g, "lr", sgd->lr()));
      sgd->momentum(GetDouble(g, "momentum", sgd->momentum()));
      sgd->dampening(GetDouble(g, "dampening", sgd->dampening()));
      sgd->weight_decay(GetDouble(g, "weight_decay", sgd->weight_decay()));
      sgd->nesterov(GetBool(g, "nesterov", sgd->nesterov()));
    } else if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&options)) {
      LoadAdamOptions(g, *adam);
    } else if (auto* adamw = dynamic_cast<torch::optim::AdamWOptions*>(&options)) {
      LoadAdamOptions(g, *adamw);
    } else {
      return absl::UnimplementedError("optimizer state_dict: only SGD, Adam and AdamW are supported");
    }
    const Value* params = Get(g, "params");
    for (size_t pi = 0; pi < group.params().size(); ++pi) {
      const torch::Tensor& p = group.params()[pi];
      const OptimizerStateKey key = StateKey(p);
      const Value* s = state->Find(params->items()[pi]);
      if (s == nullptr || !s->is_dict()) {
        optimizer.state().erase(key);
        continue;
      }
      auto tensor = [&](const char* name) -> torch::Tensor {
        const Value* v = Get(*s, name);
        if (v == nullptr || !v->is_tensor()) return torch::Tensor();
        return v->as_tensor().to(p.options()).clone();
      };
      if (dynamic_cast<torch::optim::SGDOptions*>(&options)) {
        auto st = std::make_unique<torch::optim::SGDParamState>();
        st->momentum_buffer(tensor("momentum_buffer"));
        optimizer.state()[key] = std::move(st);
      } else {
        const Value* step = Get(*s, "step");
        int64_t steps = step == nullptr ? 0
                        : step->is_tensor() ? static_cast<int64_t>(step->as_tensor().item<double>())
                        : step->is_number() ? static_cast<int64_t>(step->as_double()) : 0;
        if (dynamic_cast<torch::optim::AdamOptions*>(&options)) {
          optimizer.state()[key] = LoadAdamState<torch::optim::AdamParamState>(steps, tensor);
        } else {
          optimizer.state()[key] = LoadAdamState<torch::optim::AdamWParamState>(steps, tensor);
        }
      }
    }
  }
  return absl::OkStatus();
}

namespace {

// The engine's scalar state_dict as a Value dict.
Value FromStateDict(const StateDict& d) {
  Value out = Value::Dict(/*ordered=*/true);
  for (const auto& [key, scalar] : d.items()) {
    Value v = std::visit(
        [](const auto& x) -> Value {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::monostate>) {
            return Value();
          } else {
            return Value(x);
          }
        },
        scalar);
    out.Set(key, std::move(v));
  }
  return out;
}

}  // namespace

Value EngineStateDict(const Engine& engine) { return FromStateDict(engine.GetStateDict()); }

absl::Status LoadEngineStateDict(Engine& engine, const Value& state) {
  if (!state.is_dict()) {
    return absl::InvalidArgumentError(
        absl::StrCat("an engine state_dict must be a dict, got ", state.kind_name()));
  }
  StateDict d;
  for (size_t i = 0; i < state.size(); ++i) {
    const Value& key = state.keys()[i];
    const Value& v = state.values()[i];
    if (!key.is_string()) continue;
    switch (v.kind()) {
      case Value::Kind::kNone:
        d.Set(key.as_string(), std::monostate());
        break;
      case Value::Kind::kBool:
        d.Set(key.as_string(), v.as_bool());
        break;
      case Value::Kind::kInt:
        d.Set(key.as_string(), v.as_int());
        break;
      case Value::Kind::kDouble:
        d.Set(key.as_string(), v.as_double());
        break;
      case Value::Kind::kString:
        d.Set(key.as_string(), v.as_string());
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat("engine state_dict entry '", key.as_string(),
                                                       "' is a ", v.kind_name(), ", not a scalar"));
    }
  }
  return engine.LoadStateDict(d);
}

// LibTorch throws on what no check above foresaw (a dtype it cannot convert): an error, never an
// abort.
template <typename F>
static absl::Status NoThrow(const char* what, F f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.what()));
  }
}

absl::Status LoadOptimizerStateDict(torch::optim::Optimizer& optimizer, const Value& sd) {
  return NoThrow("loading an optimizer state_dict", [&] { return LoadOptimizerStateDictImpl(optimizer, sd); });
}

absl::Status LoadModuleStateDict(torch::nn::Module& module, const Value& state, bool strict) {
  return NoThrow("loading a module state_dict", [&] { return LoadModuleStateDictImpl(module, state, strict); });
}

}  // namespace ember
