#include "handlers/parallel/supervised_step.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <typeinfo>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "base/type_name.h"
#include "distributed/settings_agreement.h"
#include "handlers/checkpoint/snapshot_fence.h"

namespace ember {

absl::Status ValidateClipGradNorm(double max_norm, double norm_type) {
  if (!std::isfinite(max_norm) || !(max_norm > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "clip_grad_norm: the max norm must be finite and greater than 0, got ", dist::CanonicalDouble(max_norm)));
  }
  if (norm_type != 2.0 && norm_type != std::numeric_limits<double>::infinity()) {
    return absl::InvalidArgumentError(absl::StrCat("clip_grad_norm: the norm type must be 2 or inf, got ",
                                                   dist::CanonicalDouble(norm_type)));
  }
  return absl::OkStatus();
}

absl::StatusOr<ClipResult> ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm, double norm_type) {
  EMBER_RETURN_IF_ERROR(ValidateClipGradNorm(max_norm, norm_type));
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const torch::Tensor& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad().detach());
  }
  if (grads.empty()) return ClipResult{};
  // As torch 1.13's clip_grad_norm_: the norm of the per-parameter norms, on the first gradient's
  // device; the factor clamped to 1 and applied to every gradient (x * 1 is x).
  const torch::Device device = grads.front().device();
  std::vector<torch::Tensor> norms;
  norms.reserve(grads.size());
  torch::Tensor total;
  if (std::isinf(norm_type)) {
    for (const torch::Tensor& g : grads) norms.push_back(g.abs().max().to(device));
    total = norms.size() == 1 ? norms.front() : torch::stack(norms).max();
  } else {
    for (const torch::Tensor& g : grads) norms.push_back(torch::norm(g, norm_type).to(device));
    total = torch::norm(torch::stack(norms), norm_type);
  }
  const torch::Tensor coef = torch::clamp(max_norm / (total + 1e-6), c10::nullopt, 1.0);
  for (torch::Tensor& g : grads) g.mul_(coef.to(g.device()));
  return ClipResult{.norm = total.item<double>(), .factor = coef.item<double>()};
}

// LibTorch 2.4 replaced the per-device autocast functions by ones taking the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define EMBER_AUTOCAST_BY_DEVICE 1
#endif

namespace {

// The one place that knows both autocast APIs. `device` is kCPU or kCUDA (AutocastScope checks).
bool AutocastEnabled(c10::DeviceType device) {
#ifdef EMBER_AUTOCAST_BY_DEVICE
  return at::autocast::is_autocast_enabled(device);
#else
  return device == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

torch::ScalarType AutocastDtype(c10::DeviceType device) {
#ifdef EMBER_AUTOCAST_BY_DEVICE
  return at::autocast::get_autocast_dtype(device);
#else
  return device == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype()
                                         : at::autocast::get_autocast_cpu_dtype();
#endif
}

void SetAutocast(c10::DeviceType device, bool enabled, torch::ScalarType dtype) {
#ifdef EMBER_AUTOCAST_BY_DEVICE
  at::autocast::set_autocast_dtype(device, dtype);
  at::autocast::set_autocast_enabled(device, enabled);
#else
  if (device == c10::DeviceType::CUDA) {
    at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(enabled);
  } else {
    at::autocast::set_autocast_cpu_dtype(dtype);
    at::autocast::set_cpu_enabled(enabled);
  }
#endif
}

c10::DeviceType CheckedDevice(c10::DeviceType device) {
  TORCH_CHECK(device == c10::DeviceType::CPU || device == c10::DeviceType::CUDA, "AutocastScope: device ",
              c10::DeviceTypeName(device, /*lower_case=*/true), ": allowed: cpu, cuda");
  return device;
}

}  // namespace

absl::Status ValidateAutocastDtype(c10::DeviceType device, torch::ScalarType dtype) {
  if (device == c10::DeviceType::CPU && dtype == torch::kBFloat16) return absl::OkStatus();
  if (device == c10::DeviceType::CUDA && (dtype == torch::kFloat16 || dtype == torch::kBFloat16)) {
    return absl::OkStatus();
  }
  if (device != c10::DeviceType::CPU && device != c10::DeviceType::CUDA) {
    return absl::InvalidArgumentError(
        absl::StrCat("autocast device ", c10::DeviceTypeName(device, /*lower_case=*/true), ": allowed: cpu, cuda"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "autocast dtype ", c10::toString(dtype), " on ", c10::DeviceTypeName(device, /*lower_case=*/true), ": ",
      device == c10::DeviceType::CPU ? "CPU autocast supports BFloat16 only" : "allowed: Half, BFloat16"));
}

bool AutocastScope::Enabled(c10::DeviceType device) { return AutocastEnabled(CheckedDevice(device)); }

torch::ScalarType AutocastScope::Dtype(c10::DeviceType device) { return AutocastDtype(CheckedDevice(device)); }

namespace {
// Checked before anything is changed, so that a refused scope leaves autocast as it was (LibTorch
// 1.13 itself throws on a CPU dtype other than bfloat16, after the flag is set; 2.x checks nothing).
c10::DeviceType CheckedDeviceAndDtype(c10::DeviceType device, torch::ScalarType dtype) {
  const absl::Status valid = ValidateAutocastDtype(device, dtype);
  TORCH_CHECK(valid.ok(), "AutocastScope: ", std::string(valid.message()));
  return device;
}
}  // namespace

AutocastScope::AutocastScope(c10::DeviceType device, torch::ScalarType dtype)
    : device_(CheckedDeviceAndDtype(device, dtype)),
      was_enabled_(AutocastEnabled(device)),
      was_dtype_(AutocastDtype(device)) {
  SetAutocast(device_, true, dtype);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  SetAutocast(device_, was_enabled_, was_dtype_);
}

namespace {

// A parameter group's hyperparameters, as text the ranks compare: every option of torch's
// optimizers (SGD, Adam, AdamW, RMSprop, Adagrad, LBFGS), the lr of any other (and of a user's
// optimizer whose options have none, "unknown": its type is compared beside).
std::string GroupOptions(const torch::optim::OptimizerOptions& o) {
  using dist::CanonicalDouble;
  if (const auto* s = dynamic_cast<const torch::optim::SGDOptions*>(&o)) {
    return absl::StrCat("lr=", CanonicalDouble(s->lr()), " momentum=", CanonicalDouble(s->momentum()),
                        " dampening=", CanonicalDouble(s->dampening()),
                        " weight_decay=", CanonicalDouble(s->weight_decay()), " nesterov=", s->nesterov() ? 1 : 0);
  }
  // Adam and AdamW have the same options.
  auto adam = [](const auto& a) {
    return absl::StrCat("lr=", CanonicalDouble(a.lr()), " betas=", CanonicalDouble(std::get<0>(a.betas())), ",",
                        CanonicalDouble(std::get<1>(a.betas())), " eps=", CanonicalDouble(a.eps()),
                        " weight_decay=", CanonicalDouble(a.weight_decay()), " amsgrad=", a.amsgrad() ? 1 : 0);
  };
  if (const auto* a = dynamic_cast<const torch::optim::AdamOptions*>(&o)) return adam(*a);
  if (const auto* a = dynamic_cast<const torch::optim::AdamWOptions*>(&o)) return adam(*a);
  if (const auto* r = dynamic_cast<const torch::optim::RMSpropOptions*>(&o)) {
    return absl::StrCat("lr=", CanonicalDouble(r->lr()), " alpha=", CanonicalDouble(r->alpha()),
                        " eps=", CanonicalDouble(r->eps()), " weight_decay=", CanonicalDouble(r->weight_decay()),
                        " momentum=", CanonicalDouble(r->momentum()), " centered=", r->centered() ? 1 : 0);
  }
  if (const auto* g = dynamic_cast<const torch::optim::AdagradOptions*>(&o)) {
    return absl::StrCat("lr=", CanonicalDouble(g->lr()), " lr_decay=", CanonicalDouble(g->lr_decay()),
                        " weight_decay=", CanonicalDouble(g->weight_decay()),
                        " initial_accumulator_value=", CanonicalDouble(g->initial_accumulator_value()),
                        " eps=", CanonicalDouble(g->eps()));
  }
  if (const auto* l = dynamic_cast<const torch::optim::LBFGSOptions*>(&o)) {
    return absl::StrCat("lr=", CanonicalDouble(l->lr()), " max_iter=", l->max_iter(),
                        " max_eval=", l->max_eval() ? absl::StrCat(*l->max_eval()) : "None",
                        " tolerance_grad=", CanonicalDouble(l->tolerance_grad()),
                        " tolerance_change=", CanonicalDouble(l->tolerance_change()),
                        " history_size=", l->history_size(),
                        " line_search_fn=", l->line_search_fn() ? *l->line_search_fn() : "None");
  }
  try {
    return absl::StrCat("lr=", CanonicalDouble(o.get_lr()));
  } catch (const std::exception&) {  // an optimizer of the user's whose options have no lr
    return "lr=unknown";
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<SupervisedStep>> SupervisedStep::Create(Forward forward,
                                                                       torch::optim::Optimizer& optimizer,
                                                                       LossFn loss_fn, SupervisedStepOptions options) {
  if (options.accumulation_steps <= 0) {
    // ignite 0.5.3's message.
    return absl::InvalidArgumentError(
        "Gradient_accumulation_steps must be strictly positive. No gradient accumulation if the value set to one "
        "(default).");
  }
  if (options.clip_grad_norm.has_value()) {
    EMBER_RETURN_IF_ERROR(ValidateClipGradNorm(*options.clip_grad_norm, options.norm_type));
  }
  if (options.autocast_cpu_dtype.has_value() && *options.autocast_cpu_dtype != torch::kBFloat16) {
    return absl::InvalidArgumentError(absl::StrCat("SupervisedStep: autocast_cpu_dtype ",
                                                   c10::toString(*options.autocast_cpu_dtype),
                                                   ": CPU autocast supports BFloat16 only"));
  }
  if (options.autocast_cuda_dtype.has_value()) {
    if (options.autocast_cpu_dtype.has_value()) {
      return absl::InvalidArgumentError(
          "SupervisedStep: autocast_cpu_dtype and autocast_cuda_dtype are both set; the model runs on one device: "
          "set the one of its device");
    }
    if (absl::Status s = ValidateAutocastDtype(c10::DeviceType::CUDA, *options.autocast_cuda_dtype); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("SupervisedStep: autocast_cuda_dtype: ", s.message()));
    }
  }
  if (!forward || !loss_fn) return absl::InvalidArgumentError("SupervisedStep: forward and loss_fn must be set");
  DataParallel* ddp = options.data_parallel;
  if (ddp != nullptr) {
    EMBER_RETURN_IF_ERROR(ddp->status());
    if (options.accumulation_steps > 1 && ddp->overlap()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SupervisedStep: accumulation_steps ", options.accumulation_steps,
          " with a DataParallel constructed with overlap = true: its hooks would start the gradient all-reduce "
          "in the first micro-batch's backward; construct it with overlap = false to accumulate"));
    }
    if (ddp->communicator() != nullptr && ddp->world_size() > 1) {
      // Every rank must reduce at the same iterations and clip the same way.
      dist::SettingList settings;
      settings.AddInt("accumulation_steps", options.accumulation_steps)
          .Add("clip_grad_norm",
               options.clip_grad_norm.has_value() ? dist::CanonicalDouble(*options.clip_grad_norm) : "none")
          .AddDouble("norm_type", options.norm_type)
          .Add("autocast_cpu_dtype", options.autocast_cpu_dtype.has_value()
                                         ? std::string(c10::toString(*options.autocast_cpu_dtype))
                                         : "none")
          .Add("autocast_cuda_dtype", options.autocast_cuda_dtype.has_value()
                                          ? std::string(c10::toString(*options.autocast_cuda_dtype))
                                          : "none");
      // The optimizer: its type, and each parameter group's size and hyperparameters (a rank with
      // another lr or momentum would train a replica that drifts away from the others).
      settings.Add("optimizer", ReadableTypeName(typeid(optimizer)))
          .AddInt("optimizer.param_groups", static_cast<int64_t>(optimizer.param_groups().size()));
      for (size_t i = 0; i < optimizer.param_groups().size(); ++i) {
        const torch::optim::OptimizerParamGroup& group = optimizer.param_groups()[i];
        settings.Add(absl::StrCat("optimizer.param_groups[", i, "]"),
                     absl::StrCat(group.params().size(), " tensors, ", GroupOptions(group.options())));
      }
      if (const GradScaler* g = options.grad_scaler; g != nullptr) {
        settings.AddDouble("grad_scaler.scale", g->scale())
            .AddDouble("grad_scaler.growth_factor", g->options().growth_factor)
            .AddDouble("grad_scaler.backoff_factor", g->options().backoff_factor)
            .AddInt("grad_scaler.growth_interval", g->options().growth_interval)
            .AddInt("grad_scaler._growth_tracker", g->growth_tracker());
      } else {
        settings.Add("grad_scaler", "none");
      }
      EMBER_RETURN_IF_ERROR(
          dist::AgreeOnSettings(*ddp->communicator(), "SupervisedStep settings", settings, options.deadline));
    }
  }
  return std::unique_ptr<SupervisedStep>(
      new SupervisedStep(std::move(forward), optimizer, std::move(loss_fn), options));
}

absl::StatusOr<double> SupervisedStep::operator()(Engine& engine, const torch::Tensor& x, const torch::Tensor& y) {
  const int64_t k = options_.accumulation_steps;
  const int64_t iteration = engine.state().iteration;
  stepped_ = false;
  if ((iteration - 1) % k == 0) optimizer_.zero_grad();
  torch::Tensor y_pred, loss;
  if (options_.autocast_cpu_dtype.has_value() || options_.autocast_cuda_dtype.has_value()) {
    AutocastScope autocast(options_.autocast_cuda_dtype.has_value() ? c10::DeviceType::CUDA : c10::DeviceType::CPU,
                           options_.autocast_cuda_dtype.value_or(options_.autocast_cpu_dtype.value_or(torch::kBFloat16)));
    y_pred = forward_(x);
    loss = loss_fn_(y_pred, y);
  } else {
    y_pred = forward_(x);
    loss = loss_fn_(y_pred, y);
  }
  loss = loss / k;
  if (options_.grad_scaler != nullptr) {
    options_.grad_scaler->Scale(loss).backward();
  } else {
    loss.backward();
  }
  const double output = options_.output_transform ? options_.output_transform(x, y, y_pred, loss * k)
                                                  : (loss * k).item<double>();
  if (iteration % k != 0) return output;  // a micro-batch: no collective, the firing agrees itself
  if (options_.data_parallel != nullptr) {
    // One reduce per window, carrying the engine's agreement of this iteration.
    EMBER_RETURN_IF_ERROR(options_.data_parallel->AllReduceGradients(engine, output));
  }
  Window window{.iteration = iteration};
  if (options_.grad_scaler != nullptr && options_.grad_scaler->Unscale(optimizer_)) {
    // An inf or NaN in the averaged gradients: the same on every rank. No step; the scale backs off.
    options_.grad_scaler->Update(/*found_inf=*/true);
    window.skipped = true;
    last_ = window;
    return output;
  }
  if (options_.clip_grad_norm.has_value()) {
    std::vector<torch::Tensor> params;
    for (const torch::optim::OptimizerParamGroup& group : optimizer_.param_groups()) {
      for (const torch::Tensor& p : group.params()) params.push_back(p);
    }
    EMBER_ASSIGN_OR_RETURN(ClipResult clip, ClipGradNorm(params, *options_.clip_grad_norm, options_.norm_type));
    window.grad_norm = clip.norm;
    window.clip_factor = clip.factor;
    if (clip.clipped()) ++clipped_steps_;
  }
  // A background checkpoint snapshot must have finished copying before the step changes the
  // parameters (DataParallel's reduce has waited already; without it, wait here).
  if (options_.data_parallel == nullptr) WaitForSnapshots();
  optimizer_.step();
  if (options_.grad_scaler != nullptr) options_.grad_scaler->Update(/*found_inf=*/false);
  ++optimizer_steps_;
  stepped_ = true;
  last_ = window;
  return output;
}

}  // namespace ember
