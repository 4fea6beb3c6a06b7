// File: tools/lr_schedule.h
//
// The trainer's learning-rate schedule (--lr_schedule, --warmup_iters): the flag's text parsed
// and validated, and the parameter scheduler it stands for built on the trainer's optimizer
// (handlers/param_scheduler.h). Attached at ITERATION_STARTED, it sets every param group's lr
// before each step; its state is saved in every checkpoint under "lr_scheduler", so that a
// resumed run continues the schedule at the iteration it stopped.
//
//   constant              --lr throughout (no scheduler; with --warmup_iters=N a linear warm-up:
//                         0 at iteration 1, --lr at iteration N and after)
//   cosine                half a cosine from --lr down to 0 over the run's iterations (--epochs x
//                         the epoch length), after the warm-up when --warmup_iters=N is given
//                         (ignite's create_lr_scheduler_with_warmup: 0 at iteration 1, --lr at N)
//   piecewise:I=V,I=V,... linear between (iteration, lr) milestones, I the 1-based iteration
//                         the metrics report (0 is taken as 1), non-decreasing (equal ones make a
//                         jump); before the first its value, after the last the last's (ignite's
//                         PiecewiseLinear over events I-1). --warmup_iters does not combine with
//                         it: put the warm-up in the milestones.
//
// Errors name the flag, the bad value and what is allowed; numbers are plain decimals (no sign,
// space or hexadecimal). The cosine's length is fixed when the run starts (--epochs x the epoch
// length): a resume with another --epochs would stretch it, and the trainer refuses it.
#ifndef EMBER_TOOLS_LR_SCHEDULE_H_
#define EMBER_TOOLS_LR_SCHEDULE_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "handlers/param_scheduler.h"

namespace ember::tools {

struct LrSchedule {
  enum class Kind { kConstant, kCosine, kPiecewise };
  Kind kind = Kind::kConstant;
  std::vector<std::pair<int64_t, double>> milestones;  // kPiecewise
  int64_t warmup_iters = 0;
  std::string text;  // --lr_schedule as given

  // "--lr_schedule=cosine --warmup_iters=10" (the flags that make it, as a user gives them), and
  // for a cosine the length it spans, " over 256 iterations" (the run's, fixed at its start).
  std::string Describe(int64_t total_iterations) const;
  // Whether the lr changes during the run (a scheduler is attached and checkpointed).
  bool scheduled() const { return kind != Kind::kConstant || warmup_iters > 0; }
};

// Parses --lr_schedule's text and --warmup_iters (0, or >= 2).
absl::StatusOr<LrSchedule> ParseLrSchedule(const std::string& text, int64_t warmup_iters);

// The scheduler for `schedule` on `optimizer` (an SGD whose lr is the peak, --lr), for a run of
// `total_iterations`; nullptr when !schedule.scheduled().
absl::StatusOr<std::unique_ptr<ParamScheduler>> BuildLrScheduler(const LrSchedule& schedule,
                                                                 torch::optim::Optimizer& optimizer, double lr,
                                                                 int64_t total_iterations);

}  // namespace ember::tools

#endif  // EMBER_TOOLS_LR_SCHEDULE_H_
