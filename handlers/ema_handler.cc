#include "handlers/ema_handler.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/log.h"

namespace ember {
namespace {

constexpr char kSchedulerParamName[] = "ema_momentum";

// Python's repr of a float ("1.0", "0.0002", "1e-05", "1e+16", "nan", "inf"), for ignite's
// messages.
std::string PyFloatRepr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::array<char, 64> buf;
  // Shortest round-trip digits, in scientific form: [-]d[.ddd]e[+-]XX.
  const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v, std::chars_format::scientific);
  if (ec != std::errc()) return absl::StrCat(v);
  const std::string s(buf.data(), end);
  const size_t e = s.find('e');
  std::string mantissa = s.substr(0, e);
  const int exp = std::atoi(s.c_str() + e + 1);
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits.push_back(c);
  }
  std::string out;
  if (exp >= -4 && exp < 16) {  // Python's repr: fixed notation when -4 <= exponent < 16
    if (exp < 0) {
      out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exp + 1) {
      out = digits + std::string(static_cast<size_t>(exp + 1 - static_cast<int>(digits.size())), '0') + ".0";
    } else {
      out = digits.substr(0, static_cast<size_t>(exp + 1)) + "." + digits.substr(static_cast<size_t>(exp + 1));
    }
  }
  if (out.empty()) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += exp < 0 ? "e-" : "e+";
    const int a = std::abs(exp);
    if (a < 10) out += "0";
    out += std::to_string(a);
  }
  return negative ? "-" + out : out;
}

// State's own fields: a momentum under one of these names would be the counter (ignite reads
// engine.state.<name> whatever it is).
bool IsStateField(const std::string& name) {
  static const char* const kFields[] = {"iteration", "epoch",   "epoch_length", "max_epochs", "max_iters",
                                        "output",    "batch",   "metrics",      "epoch_time", "run_time",
                                        "user",      "seed",    "dataloader",   "times"};
  return std::any_of(std::begin(kFields), std::end(kFields), [&](const char* f) { return name == f; });
}

bool AveragesBuffer(const torch::Tensor& t) {
  return at::isFloatingType(t.scalar_type()) || at::isComplexType(t.scalar_type());
}

}  // namespace

absl::StatusOr<std::unique_ptr<EMAHandler>> EMAHandler::Create(std::shared_ptr<torch::nn::Module> model,
                                                               EMAHandlerOptions options) {
  // ignite's order: momentum, model, handle_buffers.
  if (!(options.momentum > 0.0 && options.momentum < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("Invalid momentum: ", PyFloatRepr(options.momentum)));
  }
  if (options.momentum_warmup.has_value() != options.warmup_iters.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "momentum_warmup and warmup_iters are given together or not at all (ignite ignores a warm-up "
        "given half), but got ",
        options.momentum_warmup ? "momentum_warmup=" + PyFloatRepr(*options.momentum_warmup) : "warmup_iters=" + std::to_string(*options.warmup_iters),
        " alone"));
  }
  if (options.momentum_warmup && !(*options.momentum_warmup >= 0.0 && *options.momentum_warmup <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("Invalid momentum_warmup: ", PyFloatRepr(*options.momentum_warmup),
                                                   "; allowed: 0 <= momentum_warmup <= 1"));
  }
  if (options.warmup_iters && *options.warmup_iters < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Invalid warmup_iters: ", *options.warmup_iters, "; allowed: warmup_iters >= 1"));
  }
  if (model == nullptr) {
    return absl::InvalidArgumentError(
        "model should be an instance of nn.Module or its subclasses, but gotmodel: NoneType");
  }
  const std::string& hb = options.handle_buffers;
  if (hb != "copy" && hb != "update" && hb != "ema_train") {
    return absl::InvalidArgumentError(
        absl::StrCat("handle_buffers can only be one of 'copy', 'update', 'ema_train', but got ", hb));
  }
  std::shared_ptr<torch::nn::Module> ema;
  try {
    ema = model->clone();
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("EMAHandler: the model cannot be deep-copied (clone()): ", e.what_without_backtrace()));
  }
  if (ema->parameters().size() != model->parameters().size() ||
      ema->buffers().size() != model->buffers().size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EMAHandler: the clone of the model has ", ema->parameters().size(), " parameters and ", ema->buffers().size(),
        " buffers, the model ", model->parameters().size(), " and ", model->buffers().size()));
  }
  return std::unique_ptr<EMAHandler>(new EMAHandler(std::move(model), std::move(ema), options));
}

EMAHandler::EMAHandler(std::shared_ptr<torch::nn::Module> model, std::shared_ptr<torch::nn::Module> ema_model,
                       const EMAHandlerOptions& options)
    : model_(std::move(model)),
      ema_model_(std::move(ema_model)),
      momentum_(options.momentum),
      momentum_warmup_(options.momentum_warmup),
      warmup_iters_(options.warmup_iters),
      handle_buffers_(options.handle_buffers) {
  for (torch::Tensor& p : ema_model_->parameters()) p.set_requires_grad(false);  // ignite's param.detach_()
  ema_model_->train(handle_buffers_ == "ema_train");
}

double EMAHandler::WarmupMomentum(int64_t k) const {
  const double warmup = momentum_warmup_.value_or(momentum_);
  const double denominator = static_cast<double>(std::max<int64_t>(1, warmup_iters_.value_or(1) - 1));
  // Python's evaluation order: warmup + ((momentum - warmup) * (k - 1)) / denominator.
  const double current = warmup + (momentum_ - warmup) * static_cast<double>(k - 1) / denominator;
  return momentum_ >= warmup ? std::min(momentum_, current) : std::max(momentum_, current);
}

void EMAHandler::Update(double momentum) {
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> ema_params = ema_model_->parameters();
  const std::vector<torch::Tensor> params = model_->parameters();
  for (size_t i = 0; i < std::min(ema_params.size(), params.size()); ++i) {
    ema_params[i].mul_(1.0 - momentum).add_(params[i].detach(), momentum);
  }
  if (handle_buffers_ == "ema_train") return;
  std::vector<torch::Tensor> ema_buffers = ema_model_->buffers();
  const std::vector<torch::Tensor> buffers = model_->buffers();
  for (size_t i = 0; i < std::min(ema_buffers.size(), buffers.size()); ++i) {
    if (handle_buffers_ == "update" && AveragesBuffer(ema_buffers[i])) {
      ema_buffers[i].mul_(1.0 - momentum).add_(buffers[i].detach(), momentum);
    } else {
      ema_buffers[i].set_data(buffers[i].detach());  // ignite's ema_b.data = model_b.data
    }
  }
}

absl::Status EMAHandler::Attach(Engine& engine, EMAAttachOptions options) {
  const std::string name = options.name;
  if (name.empty()) return absl::InvalidArgumentError("EMAHandler: the name must not be empty");
  if (IsStateField(name)) {
    return absl::InvalidArgumentError(absl::StrCat("EMAHandler: name '", name,
                                                   "' is a field of the engine's State, not a momentum; "
                                                   "choose another name (default 'ema_momentum')"));
  }
  // Register first, so that an invalid event changes nothing.
  if (has_warmup()) {
    absl::StatusOr<HandlerHandle> warmup = engine.AddEventHandler(options.event, [this](Engine& e) {
      // ignite's LambdaStateScheduler.__call__: event_index += 1, then state.ema_momentum = lambda(event_index).
      ++event_index_;
      e.state().user.Set(kSchedulerParamName, WarmupMomentum(event_index_));
    });
    if (!warmup.ok()) return warmup.status();
  }
  absl::StatusOr<HandlerHandle> update =
      engine.AddEventHandler(options.event, [this, name](Engine& e) -> absl::Status {
        const StateScalar* value = e.state().user.Find(name);
        double momentum = 0.0;
        if (const double* d = value ? std::get_if<double>(value) : nullptr) {
          momentum = *d;
        } else if (const int64_t* i = value ? std::get_if<int64_t>(value) : nullptr) {
          momentum = static_cast<double>(*i);
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("EMAHandler: engine.state.", name, " is ",
                           value == nullptr                                   ? "missing"
                           : std::holds_alternative<std::monostate>(*value)   ? "None"
                           : std::holds_alternative<bool>(*value)             ? "a bool"
                                                                              : "a string",
                           ", not a momentum"));
        }
        Update(momentum);
        return absl::OkStatus();
      });
  if (!update.ok()) return update.status();

  ember::StateDict& user = engine.state().user;
  if (user.Contains(name)) {
    if (options.warn_if_exists) {
      LogWarning(absl::StrCat("EMAHandler: Attribute '", name,
                              "' already exists in Engine.state. It might because 1. the engine has loaded its "
                              "state dict or 2. ",
                              name,
                              " is already created by other handlers. Turn off this warning by settingwarn_if_exists "
                              "to False."));
    }
  } else {
    user.Set(name, momentum_);
  }
  if (has_warmup() && !user.Contains(kSchedulerParamName)) {
    LogWarning(absl::StrCat("EMAHandler: Attribute '", kSchedulerParamName,
                            "' is not defined in the engine.state. LambdaStateScheduler will create it. Remove "
                            "this warning by setting create_new=True."));
    user.Set(kSchedulerParamName, std::monostate());
  }
  return absl::OkStatus();
}

Value EMAHandler::StateDict() const {
  if (!has_warmup()) return Value();
  Value state = Value::Dict(/*ordered=*/true);
  state.Set("event_index", event_index_);
  state.Set("param_name", kSchedulerParamName);
  state.Set("save_history", false);
  Value lambda = Value::Dict(/*ordered=*/true);
  lambda.Set("momentum_warmup", *momentum_warmup_);
  lambda.Set("warmup_iters", *warmup_iters_);
  lambda.Set("momentum", momentum_);
  state.Set("lambda_obj", std::move(lambda));
  return state;
}

absl::Status EMAHandler::LoadStateDict(const Value& state) {
  if (!has_warmup()) {
    if (state.is_none()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("EMAHandler: this handler has no warm-up, so its state_dict is None, but got ", state.DebugString()));
  }
  if (!state.is_dict()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EMAHandler: state_dict should be a dict (the warm-up's), but got ", state.DebugString()));
  }
  const Value* index = state.Find("event_index");
  if (index == nullptr) return absl::InvalidArgumentError("EMAHandler: state_dict has no 'event_index'");
  absl::StatusOr<int64_t> k = index->ToInt("event_index");
  if (!k.ok()) return k.status();
  if (*k < 0) return absl::InvalidArgumentError(absl::StrCat("EMAHandler: event_index ", *k, " is negative"));
  if (const Value* lambda = state.Find("lambda_obj"); lambda != nullptr && lambda->is_dict()) {
    const std::pair<const char*, double> mine[] = {{"momentum_warmup", *momentum_warmup_},
                                                   {"warmup_iters", static_cast<double>(*warmup_iters_)},
                                                   {"momentum", momentum_}};
    for (const auto& [key, expected] : mine) {
      const Value* v = lambda->Find(key);
      if (v == nullptr) continue;
      absl::StatusOr<double> got = v->ToDouble(absl::StrCat("lambda_obj['", key, "']"));
      if (!got.ok()) return got.status();
      if (*got != expected) {
        return absl::InvalidArgumentError(absl::StrCat("EMAHandler: the state_dict is of a warm-up with ", key, "=",
                                                       PyFloatRepr(*got), ", this handler has ", PyFloatRepr(expected)));
      }
    }
  }
  event_index_ = *k;
  return absl::OkStatus();
}

}  // namespace ember
