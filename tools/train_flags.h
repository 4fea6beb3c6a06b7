// File: tools/train_flags.h
//
// The trainer's command line: every flag of //tools:train, read once into a TrainFlags value and
// validated, so that the rest of the trainer never reads a flag. An error names the flag, the bad
// value and what is allowed ("--epochs must be >= 1, got 0").
//
// Paths are made the user's (under `bazel run` the binary starts in its runfiles tree; a relative
// --output_dir, --resume_from or --data=csv:PATH means the user's working directory).
//
// Example:
//   absl::ParseCommandLine(argc, argv);
//   absl::StatusOr<dist::LaunchOptions> launch = LaunchOptionsFromFlags();
//   ... launch the world ...
//   EMBER_ASSIGN_OR_RETURN(TrainFlags flags, ReadTrainFlags(world_size));
#ifndef EMBER_TOOLS_TRAIN_FLAGS_H_
#define EMBER_TOOLS_TRAIN_FLAGS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "distributed/launch.h"
#include "distributed/settings_agreement.h"
#include "handlers/progress.h"
#include "tools/lr_schedule.h"

namespace ember::tools {

// A testing aid's RANK:ITERATION (rank -1: not given).
struct RankIteration {
  int rank = -1;
  int64_t iteration = -1;
};

struct TrainFlags {
  std::string data;                   // the --data spec, its path the user's
  std::string model;                  // mlp | cnn
  std::string hidden_text;            // --hidden as given
  std::vector<int64_t> hidden;        // its layer sizes
  int epochs = 0;
  int batch_size = 0;                 // per rank (from --global_batch when that is given)
  int64_t global_batch = 0;           // per step, over all ranks (batch_size x ranks without --global_batch)
  bool global_batch_given = false;    // --global_batch fixed it (it then survives another world size)
  bool ledger = false;
  double lr = 0;
  bool lr_given = false;              // on the command line (it then replaces a resumed checkpoint's)
  double momentum = 0;
  bool momentum_given = false;
  LrSchedule lr_schedule;             // --lr_schedule and --warmup_iters
  int accumulate = 1;                 // micro-batches per optimizer step
  int64_t bucket_bytes = 0;           // --bucket_mib, in bytes
  bool reduce_alone = false;          // world size 1: the bucket path anyway
  double clip_grad_norm = 0;          // 0: no clipping
  std::string precision;              // float32 | bfloat16 | float16 (CUDA)
  double ema = 0;                     // EMA momentum; 0: none
  std::string time_limit;             // empty: none; seconds; "slurm"
  int64_t seed = 0;
  std::string output_dir;             // the user's path
  int n_saved = 0;
  bool async_save = false;
  int patience = 0;
  bool resume = false;
  std::string resume_from;            // the user's path, empty: not given
  bool eval_only = false;
  bool start_over = false;
  std::string backend;
  std::string device;                 // cpu | cuda
  absl::Duration deadline;            // --deadline_s
  RankIteration inject_nan;
  RankIteration inject_preempt;
  absl::Duration step_delay;          // --inject_step_delay_ms
  Progress::Mode progress = Progress::Mode::kAuto;
  int threads = 1;

  bool resuming() const { return resume || !resume_from.empty(); }

};

// The flags that define the run, as given (their text; --lr and --momentum left at their default
// say so, "0.05 (default)", since a given value replaces a resumed checkpoint's and a default
// does not; for the others an explicit default is the same setting), in a fixed order: every rank of a job must hold the same ones, and the
// trainer agrees on them once at start (dist::AgreeOnSettings) before anything else
// communicates. `flag_error` is this rank's flag error (empty: none): a rank whose flags are
// invalid takes part in the agreement too, so that its peers name it instead of waiting.
// Run-defining: --data, --model, --hidden, --seed, --epochs, --batch_size, --global_batch, --lr,
// --momentum, --lr_schedule, --warmup_iters, --accumulate, --bucket_mib, --reduce_alone, --clip_grad_norm, --ema, --precision,
// --time_limit,
// --patience, --n_saved, --async_save, --ledger, --output_dir, --resume,
// --resume_from, --start_over, --eval_only, --backend, --device, --inject_nan, --inject_preempt
// (the testing aids change what every rank does). Rank-local, not agreed: --progress (rank 0
// displays), --threads, --deadline_s, --init_timeout_s, --inject_step_delay_ms.
dist::SettingList RunDefiningFlags(const std::string& flag_error);

// The launch options from --backend, --device and --init_timeout_s (a bad --init_timeout_s is
// reported by ReadTrainFlags with the other flags; the launch then waits the default).
dist::LaunchOptions LaunchOptionsFromFlags();

// Reads and validates every flag for a job of `world_size` ranks (the testing aids name a rank,
// --global_batch must be divisible by the ranks).
absl::StatusOr<TrainFlags> ReadTrainFlags(int world_size);

// --help, -help, -h or --helpshort among the arguments: prints the trainer's flags to stdout and
// returns true (a request, not an error: the caller exits 0).
bool HandleHelp(int argc, char** argv);

// --hidden's layer sizes ("256,128"); each in [1, 65536].
absl::StatusOr<std::vector<int64_t>> ParseHidden(const std::string& text);

// A testing aid's RANK:ITERATION (`flag` names it in the error); empty text: not given.
absl::StatusOr<RankIteration> ParseRankIteration(const char* flag, const std::string& text, int world);

// `bazel run` starts the binary in its runfiles tree; relative paths mean the user's directory.
std::string UserPath(const std::string& path);

}  // namespace ember::tools

#endif  // EMBER_TOOLS_TRAIN_FLAGS_H_
