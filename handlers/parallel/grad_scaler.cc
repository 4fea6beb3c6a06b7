#include "handlers/parallel/grad_scaler.h"

#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace ember {

absl::StatusOr<std::unique_ptr<GradScaler>> GradScaler::Create(GradScalerOptions o) {
  auto bad = [](const std::string& m) { return absl::InvalidArgumentError(absl::StrCat("GradScaler: ", m)); };
  if (!(o.init_scale > 0) || !std::isfinite(o.init_scale) || !std::isfinite(static_cast<float>(o.init_scale)) ||
      !(static_cast<float>(o.init_scale) > 0)) {
    return bad(absl::StrCat("init_scale must be finite in float32 and > 0, got ", o.init_scale));
  }
  if (!(o.growth_factor > 1) || !std::isfinite(o.growth_factor)) {
    return bad(absl::StrCat("growth_factor must be > 1 (and finite), got ", o.growth_factor));
  }
  if (!(o.backoff_factor > 0 && o.backoff_factor < 1)) {
    return bad(absl::StrCat("backoff_factor must be in (0, 1), got ", o.backoff_factor));
  }
  if (o.growth_interval < 1) return bad(absl::StrCat("growth_interval must be >= 1, got ", o.growth_interval));
  return std::unique_ptr<GradScaler>(new GradScaler(o));
}

torch::Tensor GradScaler::Scale(const torch::Tensor& loss) const {
  return loss * torch::full({}, scale_, loss.options().dtype(torch::kFloat32));
}

bool GradScaler::Unscale(torch::optim::Optimizer& optimizer) const {
  // torch: inv_scale = self._scale.double().reciprocal().float()
  const float inv_scale = static_cast<float>(1.0 / static_cast<double>(scale_));
  torch::NoGradGuard no_grad;
  // The non-finite flags gather in one tensor on the first gradient's device and are read once:
  // on a GPU, one synchronization per step, not one per parameter.
  torch::Tensor non_finite;
  for (const torch::optim::OptimizerParamGroup& group : optimizer.param_groups()) {
    for (const torch::Tensor& p : group.params()) {
      if (!p.grad().defined()) continue;
      torch::Tensor g = p.grad();
      g.mul_(inv_scale);
      torch::Tensor bad = torch::isfinite(g).all().logical_not();
      non_finite = non_finite.defined() ? non_finite.logical_or(bad.to(non_finite.device())) : bad;
    }
  }
  return non_finite.defined() && non_finite.item<bool>();
}

void GradScaler::Update(bool found_inf) {
  // _amp_update_scale_: backoff on inf; growth after growth_interval successes, if finite.
  if (found_inf) {
    scale_ = static_cast<float>(scale_ * options_.backoff_factor);
    growth_tracker_ = 0;
    ++skipped_steps_;
    return;
  }
  const int64_t successful = growth_tracker_ + 1;
  if (successful == options_.growth_interval) {
    const float grown = static_cast<float>(scale_ * options_.growth_factor);
    if (std::isfinite(grown)) scale_ = grown;
    growth_tracker_ = 0;
  } else {
    growth_tracker_ = successful;
  }
}

Value GradScaler::StateDict() const {
  Value state = Value::Dict(/*ordered=*/false);
  state.Set("scale", static_cast<double>(scale_));
  state.Set("growth_factor", options_.growth_factor);
  state.Set("backoff_factor", options_.backoff_factor);
  state.Set("growth_interval", options_.growth_interval);
  state.Set("_growth_tracker", growth_tracker_);
  return state;
}

absl::Status GradScaler::LoadStateDict(const Value& state) {
  if (!state.is_dict()) return absl::InvalidArgumentError("GradScaler state: expected a dict");
  auto need = [&](const char* key) -> absl::StatusOr<const Value*> {
    const Value* v = state.Find(key);
    if (v == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("GradScaler state: no '", key,
                                                     "' (Python's GradScaler.state_dict() has scale, growth_factor, "
                                                     "backoff_factor, growth_interval, _growth_tracker)"));
    }
    return v;
  };
  const Value* v;
  GradScalerOptions o;
  EMBER_ASSIGN_OR_RETURN(v, need("scale"));
  EMBER_ASSIGN_OR_RETURN(o.init_scale, v->ToDouble("scale"));
  EMBER_ASSIGN_OR_RETURN(v, need("growth_factor"));
  EMBER_ASSIGN_OR_RETURN(o.growth_factor, v->ToDouble("growth_factor"));
  EMBER_ASSIGN_OR_RETURN(v, need("backoff_factor"));
  EMBER_ASSIGN_OR_RETURN(o.backoff_factor, v->ToDouble("backoff_factor"));
  EMBER_ASSIGN_OR_RETURN(v, need("growth_interval"));
  EMBER_ASSIGN_OR_RETURN(o.growth_interval, v->ToInt("growth_interval"));
  int64_t tracker;
  EMBER_ASSIGN_OR_RETURN(v, need("_growth_tracker"));
  EMBER_ASSIGN_OR_RETURN(tracker, v->ToInt("_growth_tracker"));
  // The same checks as Create (a crafted file names what is wrong).
  absl::StatusOr<std::unique_ptr<GradScaler>> valid = Create(o);
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat("GradScaler state: ", valid.status().message()));
  if (tracker < 0 || tracker >= o.growth_interval) {
    return absl::InvalidArgumentError(absl::StrCat("GradScaler state: _growth_tracker ", tracker,
                                                   " is outside [0, growth_interval = ", o.growth_interval, ")"));
  }
  options_ = o;
  scale_ = static_cast<float>(o.init_scale);
  growth_tracker_ = tracker;
  return absl::OkStatus();
}

}  // namespace ember
