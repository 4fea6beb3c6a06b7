// File: handlers/parallel/supervised_step.h
//
// SupervisedStep: the step function of ignite's create_supervised_trainer with
// gradient_accumulation_steps = K, plus gradient clipping by global norm, made exact under
// data-parallel training. Per call (engine's iteration i, the global counter: windows of K
// micro-batches ignore epoch boundaries):
//   if (i - 1) % K == 0: optimizer.zero_grad()
//   loss = loss_fn(forward(x), y) / K;  loss.backward()
//   if i % K == 0: [DataParallel: average the gradients over the ranks] [clip] optimizer.step()
//   return (loss * K).item()   (or output_transform(x, y, y_pred, loss * K))
// With a GradScaler, backward runs on loss * scale and the window's averaged gradients are
// unscaled (and checked for inf/NaN: the step is then skipped) before clipping.
// The gradients of a trailing incomplete window (the run ends, or is cut, inside it) are never
// applied; gradients are in no state_dict (as in ignite), so a run resumed in the middle of a
// window applies only the micro-batches it ran of it (golden accum_k3_resume_mid_window).
//
// Clipping (torch.nn.utils.clip_grad_norm_ of torch 1.13): over the optimizer's parameters that
// have a gradient, total = ||(||g_1||, ..., ||g_n||)|| (norm type 2, or inf: the largest |g|),
// factor = min(1, max_norm / (total + 1e-6)), every gradient *= factor. A non-finite total makes
// the gradients non-finite, as in torch (TerminateOnNan sees the loss). last_window() reports the
// pre-clip norm and the factor; clipped_steps() counts the windows whose factor was below 1.
//
// Multi-rank (options.data_parallel): every rank accumulates its K micro-batches locally (no
// collective in the K-1 micro-batch steps), then the window's last step averages the gradients in
// one DataParallel::AllReduceGradients(engine, output): each rank reduces exactly once per window,
// and the engine's ITERATION_COMPLETED agreement (TerminateOnNan, Preemption) rides in its last
// bucket. On the other K-1 iterations the engine agrees in its own collective at the firing (when a
// synchronized handler is due): the agreement is decided at every iteration on every rank. Whether
// an iteration reduces depends only on the engine's iteration and K, both the same on every rank
// (Create agrees K, the clip settings and the autocast dtype across the ranks), so the ranks issue the same collectives
// in the same order. Clipping runs on the averaged gradients, bitwise the same on every rank, with
// the same operations, so every rank computes the same norm and clips by the same factor. Several
// backward passes before one reduce need DataParallel's overlap = false (its hooks would start
// buckets during the first micro-batch's backward): Create refuses K > 1 with overlap.
//
// Checkpoints: the step waits at the snapshot fence (WaitForSnapshots, snapshot_fence.h) before
// optimizer.step(), so a Checkpoint with snapshot_in_background is safe (with DataParallel its
// AllReduceGradients is that fence).
//
// Thread safety: not thread-safe; call it from the engine's step function on the training thread.
//
// Example:
//   ember::DataParallel ddp(*model, {.overlap = false});
//   auto step = ember::SupervisedStep::Create(
//       [&](const torch::Tensor& x) { return model->forward(x); }, optimizer,
//       [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
//       {.accumulation_steps = 4, .clip_grad_norm = 1.0, .data_parallel = &ddp});
//   EMBER_RETURN_IF_ERROR(step.status());
//   ember::Engine trainer([&](ember::Engine& e, const Batch& b) { return (**step)(e, b.x, b.y); });
#ifndef EMBER_HANDLERS_PARALLEL_SUPERVISED_STEP_H_
#define EMBER_HANDLERS_PARALLEL_SUPERVISED_STEP_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/parallel/grad_scaler.h"

namespace ember {

// ---- Clipping by global norm ---------------------------------------------------------------
struct ClipResult {
  double norm = 0;    // the total norm before clipping
  double factor = 1;  // what every gradient was multiplied by (1: not clipped)
  bool clipped() const { return factor < 1; }
};
// kInvalidArgument unless max_norm is finite and > 0 and norm_type is 2 or infinity.
absl::Status ValidateClipGradNorm(double max_norm, double norm_type);
// torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type) of torch 1.13, returning the
// pre-clip norm and the factor. Parameters without a gradient are skipped (none: norm 0).
absl::StatusOr<ClipResult> ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm,
                                        double norm_type = 2.0);

// ---- Mixed precision -------------------------------------------------------------------------
// torch.autocast(device, dtype) as a scope: autocast of `device` on with `dtype` until the scope
// ends, which restores the enabled flag and dtype found at its start and, leaving the outermost
// scope, clears autocast's cast cache (as torch.autocast's __exit__). Devices: kCPU (bfloat16, the
// one dtype CPU autocast supports in LibTorch 1.13) and kCUDA (float16, as torch.autocast("cuda")
// by default, or bfloat16); another device or dtype throws c10::Error naming it and what is
// allowed (ValidateAutocastDtype's message), before anything is changed. The flags are per thread
// (autocast's thread-local state). Compiles against LibTorch 1.13 (set_enabled / set_cpu_enabled
// and set_autocast_{gpu,cpu}_dtype) and 2.x (from 2.4 the per-device set_autocast_enabled and
// set_autocast_dtype; the older names are deprecated there).
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, torch::ScalarType dtype);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;
  // Whether `device`'s autocast is on now in this thread, and its dtype.
  static bool Enabled(c10::DeviceType device);
  static torch::ScalarType Dtype(c10::DeviceType device);

 private:
  c10::DeviceType device_;
  bool was_enabled_;
  torch::ScalarType was_dtype_;
};

// OK when autocast of `device` supports `dtype` (above); otherwise InvalidArgument naming both
// and what is allowed.
absl::Status ValidateAutocastDtype(c10::DeviceType device, torch::ScalarType dtype);

// torch.autocast("cpu", dtype).
class CpuAutocastScope : public AutocastScope {
 public:
  explicit CpuAutocastScope(torch::ScalarType dtype = torch::kBFloat16) : AutocastScope(c10::DeviceType::CPU, dtype) {}
  static bool Enabled() { return AutocastScope::Enabled(c10::DeviceType::CPU); }
  static torch::ScalarType Dtype() { return AutocastScope::Dtype(c10::DeviceType::CPU); }
};

// torch.autocast("cuda", dtype): float16 by default (pair it with a GradScaler), or bfloat16.
class CudaAutocastScope : public AutocastScope {
 public:
  explicit CudaAutocastScope(torch::ScalarType dtype = torch::kFloat16) : AutocastScope(c10::DeviceType::CUDA, dtype) {}
  static bool Enabled() { return AutocastScope::Enabled(c10::DeviceType::CUDA); }
  static torch::ScalarType Dtype() { return AutocastScope::Dtype(c10::DeviceType::CUDA); }
};

// ---- The step --------------------------------------------------------------------------------
struct SupervisedStepOptions {
  int64_t accumulation_steps = 1;        // K >= 1
  std::optional<double> clip_grad_norm;  // max norm (> 0, finite); none: no clipping
  double norm_type = 2.0;                // 2 or std::numeric_limits<double>::infinity()
  DataParallel* data_parallel = nullptr; // averages each window's gradients over the ranks
  // ignite's output_transform(x, y, y_pred, loss * K): the step's output (what TerminateOnNan and
  // the carried agreement see). Default: (loss * K).item().
  std::function<double(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& y_pred,
                       const torch::Tensor& loss)>
      output_transform;
  // Mixed precision (ignite's amp_mode="amp" on the CPU): forward and loss_fn run inside a
  // CpuAutocastScope of this dtype (bfloat16 only), backward and the optimizer step outside it.
  std::optional<torch::ScalarType> autocast_cpu_dtype;
  // The same on a GPU (ignite's amp_mode="amp" with a CUDA model): a CudaAutocastScope of this
  // dtype (float16 or bfloat16); float16 wants a grad_scaler (below), as torch's recipe. Not with
  // autocast_cpu_dtype.
  std::optional<torch::ScalarType> autocast_cuda_dtype;
  // Dynamic loss scaling (grad_scaler.h; not owned): the loss is scaled before backward, the
  // window's gradients unscaled after the reduce (before clipping) and checked; a window with an
  // inf or NaN gradient is skipped on every rank (its average is non-finite everywhere).
  GradScaler* grad_scaler = nullptr;
  absl::Duration deadline = absl::Seconds(300);  // Create's settings agreement
};

class SupervisedStep {
 public:
  using Forward = std::function<torch::Tensor(const torch::Tensor& x)>;
  using LossFn = std::function<torch::Tensor(const torch::Tensor& y_pred, const torch::Tensor& y)>;

  // Validates the options (ignite's error for K < 1) and, with a DataParallel of several ranks,
  // agrees them across the ranks (a collective: call it on every rank; a mismatch fails on every
  // rank naming the setting, dist::AgreeOnSettings).
  static absl::StatusOr<std::unique_ptr<SupervisedStep>> Create(Forward forward, torch::optim::Optimizer& optimizer,
                                                                LossFn loss_fn, SupervisedStepOptions options = {});

  // One micro-batch: call from `engine`'s step function; returns the step's output (the loss).
  absl::StatusOr<double> operator()(Engine& engine, const torch::Tensor& x, const torch::Tensor& y);

  // What the last applied window did.
  struct Window {
    int64_t iteration = 0;             // the engine iteration that applied it (0: none yet)
    std::optional<double> grad_norm;   // the pre-clip global norm (clipping on)
    double clip_factor = 1;            // 1 without clipping
    bool skipped = false;              // grad_scaler found an inf or NaN: no optimizer step
  };
  const Window& last_window() const { return last_; }
  // Whether the last call ran optimizer.step().
  bool stepped() const { return stepped_; }
  int64_t optimizer_steps() const { return optimizer_steps_; }
  int64_t clipped_steps() const { return clipped_steps_; }
  const SupervisedStepOptions& options() const { return options_; }

 private:
  SupervisedStep(Forward forward, torch::optim::Optimizer& optimizer, LossFn loss_fn, SupervisedStepOptions options)
      : forward_(std::move(forward)), optimizer_(optimizer), loss_fn_(std::move(loss_fn)), options_(options) {}

  Forward forward_;
  torch::optim::Optimizer& optimizer_;
  LossFn loss_fn_;
  SupervisedStepOptions options_;
  Window last_;
  bool stepped_ = false;
  int64_t optimizer_steps_ = 0, clipped_steps_ = 0;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_PARALLEL_SUPERVISED_STEP_H_
