// File: handlers/parallel/grad_scaler.h
//
// GradScaler: dynamic loss scaling for float16 training (torch.cuda.amp.GradScaler of torch
// 1.13), made exact under data-parallel training. The loss is multiplied by `scale` before
// backward, so that small float16 gradients do not flush to zero; before the optimizer step the
// gradients are divided by it again (multiplied by float32(1 / scale), as torch does) and checked:
// if any is inf or NaN the step is skipped and the scale is multiplied by backoff_factor; after
// growth_interval steps in a row without one it is multiplied by growth_factor (if the result is
// finite). torch's own kernels for this (_amp_foreach_non_finite_check_and_unscale_,
// _amp_update_scale_) exist only for CUDA in LibTorch 1.13; this does the same arithmetic with
// tensor operations on any device.
//
// Multi-rank: SupervisedStep unscales and checks the gradients after DataParallel has averaged
// them. An inf or NaN on any rank makes the sum, and so every rank's average, non-finite: every
// rank finds it, skips the same step and moves its scale the same way, with no collective of its
// own (the found-inf decision rides in the gradient all-reduce, as the NaN flag does).
//
// State (Stateful): Python's GradScaler.state_dict() layout, in its order: "scale" (a float),
// "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker" (an int), so that a
// checkpoint's scaler loads into torch's (torch.load(f)["scaler"]) and back.
//
// Example (with SupervisedStep):
//   auto scaler = ember::GradScaler::Create({.init_scale = 65536});
//   auto step = ember::SupervisedStep::Create(forward, optimizer, loss_fn,
//                                             {.data_parallel = &ddp, .grad_scaler = scaler->get()});
//   ... {"scaler", **scaler} in the checkpoint's objects ...
//
// Not thread-safe: the training thread uses it.
#ifndef EMBER_HANDLERS_PARALLEL_GRAD_SCALER_H_
#define EMBER_HANDLERS_PARALLEL_GRAD_SCALER_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "handlers/checkpoint/stateful.h"
#include "handlers/serialization/value.h"

namespace ember {

struct GradScalerOptions {
  double init_scale = 65536.0;   // finite, > 0
  double growth_factor = 2.0;    // > 1
  double backoff_factor = 0.5;   // in (0, 1)
  int64_t growth_interval = 2000;  // >= 1
};

class GradScaler : public Stateful {
 public:
  // kInvalidArgument naming the bad option and what is allowed.
  static absl::StatusOr<std::unique_ptr<GradScaler>> Create(GradScalerOptions options = {});

  // loss * scale (the scale as a float32 scalar on the loss's device).
  torch::Tensor Scale(const torch::Tensor& loss) const;
  // Multiplies every gradient of the optimizer's parameters by float32(1 / scale) in place and
  // returns whether any of them holds an inf or a NaN.
  bool Unscale(torch::optim::Optimizer& optimizer) const;
  // After a step's Unscale: backoff (and the tracker to 0) when found_inf, else one more success
  // (growth, and the tracker to 0, at growth_interval). Counts skipped steps.
  void Update(bool found_inf);

  double scale() const { return scale_; }
  int64_t growth_tracker() const { return growth_tracker_; }
  int64_t skipped_steps() const { return skipped_steps_; }
  const GradScalerOptions& options() const { return options_; }

  Value StateDict() const override;
  absl::Status LoadStateDict(const Value& state) override;

 private:
  explicit GradScaler(GradScalerOptions options)
      : options_(options), scale_(static_cast<float>(options.init_scale)) {}
  GradScalerOptions options_;
  float scale_;  // torch keeps it in a float32 tensor
  int64_t growth_tracker_ = 0;
  int64_t skipped_steps_ = 0;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_PARALLEL_GRAD_SCALER_H_
