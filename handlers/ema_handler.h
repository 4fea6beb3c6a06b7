// File: handlers/ema_handler.h
//
// EMAHandler (ignite v0.5.3's handlers/ema_handler.py): an exponential moving average of a
// model's parameters, kept in a deep copy of the model (`ema_model()`, a clone()) and updated
// once per event:
//   ema_p = ema_p * (1 - momentum) + model_p * momentum        (ema_p.mul_(1 - m).add_(p, m))
// where momentum is read from engine.state (state().user[name]) at each update.
//
// Construction (Create): momentum in (0, 1); the EMA model is model->clone() (the model must be a
// torch::nn::Cloneable, as LibTorch's own modules are), its parameters detached (no gradient),
// in eval() mode, or train() mode with handle_buffers "ema_train".
//
// Warm-up: with momentum_warmup and warmup_iters, the momentum of the k-th update (k counts
// updates, not iterations: with a filtered event only the firings that update count) is
//   momentum_warmup + (momentum - momentum_warmup) * (k - 1) / max(1, warmup_iters - 1),
// clamped at momentum (ignite's EMAWarmUp). It is written to state().user["ema_momentum"] by an
// internal handler registered on the same event just before the update (ignite's
// LambdaStateScheduler with param_name "ema_momentum").
//
// Attach(engine, {name, warn_if_exists, event}) (ignite's attach):
//   - state().user[name] is set to `momentum` unless it exists; an existing one is kept, and
//     with warn_if_exists a warning is logged (ignite's "Attribute 'ema_momentum' already exists
//     in Engine.state. ..."); the update then uses the existing value.
//   - with a warm-up, the warm-up handler is registered on `event`, then the update. When
//     "ema_momentum" does not exist in state().user, ignite's "Attribute 'ema_momentum' is not
//     defined in the engine.state. LambdaStateScheduler will create it. ..." is logged and it is
//     created (None).
//   - ignite's quirk, kept: the warm-up always writes "ema_momentum", while the update reads
//     `name`; with another name the warm-up has no effect on the average.
//   - `event` is any event with any filter (default ITERATION_COMPLETED); an invalid filter is
//     returned as an error (ignite's messages), and nothing is changed.
//
// Buffers (handle_buffers, applied after the parameters at each update):
//   "copy"      each EMA buffer takes the online buffer's data (ignite's ema_b.data = b.data):
//               they then share storage, so in-place changes of the online buffers show in the
//               EMA model between updates too.
//   "update"    floating-point (and complex) buffers are averaged like the parameters; others
//               (int64 counters, bool) take the online buffer's data as "copy" does (ignite
//               tries mul_ and assigns on its RuntimeError).
//   "ema_train" buffers are left alone (the EMA model is in train mode; its forward passes
//               update them).
//
// Errors (kInvalidArgument, ignite's messages): "Invalid momentum: 1.0"; a null model: "model
// should be an instance of nn.Module or its subclasses, but gotmodel: NoneType"; "handle_buffers
// can only be one of 'copy', 'update', 'ema_train', but got average". A non-number in
// state().user[name] at an update fails the run, naming it.
//
// Checkpoints: the EMA model is checkpointed like any model ({"ema_model", handler->ema_model()}
// in a Checkpoint's ObjectMap); the file reads in Python as ema_model.state_dict().
//
// Ember differs from ignite:
//   - Create returns errors as absl::Status; the model's type is checked at compile time.
//   - Arguments ignite accepts silently are refused: only one of momentum_warmup and
//     warmup_iters ("momentum_warmup and warmup_iters are given together or not at all"), a
//     momentum_warmup outside [0, 1], warmup_iters < 1, an empty name, or a name of State's own
//     fields (ignite would average with engine.state.epoch).
//   - Stateful (an addition): ignite's EMAHandler has no state_dict, so its warm-up starts again
//     after a resume (scenario ema_resume_warmup_restarts). StateDict() is ignite's
//     momentum_scheduler.state_dict() (event_index, param_name, save_history, lambda_obj as the
//     dict of EMAWarmUp's attributes), None without a warm-up; a checkpoint that holds the
//     handler ({"ema_handler", *handler}) resumes the warm-up exactly. The position counts from
//     construction (ignite: from attach; the same unless attached twice).
//   - Warnings go to ember::LogWarning (base/log.h) prefixed "EMAHandler: ".
//
// Multi-rank (DataParallel): a plain handler with no collective. Every rank's EMA parameters are
// bitwise equal when the online parameters are, which DataParallel guarantees from its
// construction on: create the EMAHandler after DataParallel (whose constructor broadcasts rank
// 0's parameters), else each rank's EMA starts from its own initialisation. EMA buffers follow the
// online buffers, which DataParallel makes equal only at its construction (BatchNorm's running
// statistics then differ per rank, in the online and in the EMA model alike).
//
// Not thread-safe: the engine's thread calls it. The handler is referenced by the engine
// (Attach registers handlers that point to it): it must outlive the engine's runs.
//
// Example:
//   auto ema = ember::EMAHandler::Create(model, {.momentum = 0.001, .momentum_warmup = 0.1,
//                                                .warmup_iters = 1000});
//   EMBER_RETURN_IF_ERROR(ema.status());
//   EMBER_RETURN_IF_ERROR((*ema)->Attach(trainer));
//   ... evaluate (*ema)->ema_model() ...
#ifndef EMBER_HANDLERS_EMA_HANDLER_H_
#define EMBER_HANDLERS_EMA_HANDLER_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "engine/events.h"
#include "handlers/checkpoint/stateful.h"
#include "handlers/serialization/value.h"

namespace ember {

struct EMAHandlerOptions {
  double momentum = 0.0002;               // in (0, 1)
  std::optional<double> momentum_warmup;  // with warmup_iters: in [0, 1]
  std::optional<int64_t> warmup_iters;    // with momentum_warmup: >= 1
  std::string handle_buffers = "copy";    // "copy", "update" or "ema_train"
};

struct EMAAttachOptions {
  std::string name = "ema_momentum";  // the state().user key the update reads
  bool warn_if_exists = true;
  EventList event = Events::IterationCompleted();
};

class EMAHandler : public Stateful {
 public:
  static absl::StatusOr<std::unique_ptr<EMAHandler>> Create(std::shared_ptr<torch::nn::Module> model,
                                                            EMAHandlerOptions options = {});
  template <typename M>
  static absl::StatusOr<std::unique_ptr<EMAHandler>> Create(const torch::nn::ModuleHolder<M>& model,
                                                            EMAHandlerOptions options = {}) {
    // An empty holder (torch::nn::Linear{nullptr}) is a null model, not a c10::Error.
    return Create(model.is_empty() ? nullptr : std::shared_ptr<torch::nn::Module>(model.ptr()), std::move(options));
  }
  EMAHandler(const EMAHandler&) = delete;
  EMAHandler& operator=(const EMAHandler&) = delete;
  ~EMAHandler() override = default;

  absl::Status Attach(Engine& engine, EMAAttachOptions options = {});

  // The EMA model (a clone of the model) and the online model.
  torch::nn::Module& ema_model() const { return *ema_model_; }
  const std::shared_ptr<torch::nn::Module>& ema_model_ptr() const { return ema_model_; }
  torch::nn::Module& model() const { return *model_; }

  double momentum() const { return momentum_; }
  bool has_warmup() const { return warmup_iters_.has_value(); }
  const std::string& handle_buffers() const { return handle_buffers_; }
  // The number of warm-up events so far (ignite's momentum_scheduler.event_index).
  int64_t warmup_event_index() const { return event_index_; }
  // The momentum of the k-th update under the warm-up (ignite's EMAWarmUp(k)); requires a warm-up.
  double WarmupMomentum(int64_t k) const;

  // One update with `momentum` (ignite's _update_ema_model, the momentum given).
  void Update(double momentum);

  // See "Stateful" above.
  Value StateDict() const override;
  absl::Status LoadStateDict(const Value& state) override;

 private:
  EMAHandler(std::shared_ptr<torch::nn::Module> model, std::shared_ptr<torch::nn::Module> ema_model,
             const EMAHandlerOptions& options);

  std::shared_ptr<torch::nn::Module> model_;
  std::shared_ptr<torch::nn::Module> ema_model_;
  double momentum_;
  std::optional<double> momentum_warmup_;
  std::optional<int64_t> warmup_iters_;
  std::string handle_buffers_;
  int64_t event_index_ = 0;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_EMA_HANDLER_H_
