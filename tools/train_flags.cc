#include "tools/train_flags.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/flags/internal/parse.h"
#include "absl/flags/internal/program_name.h"
#include "absl/flags/internal/usage.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/file_system.h"
#include "base/status_macros.h"
#include "tools/lr_schedule.h"

ABSL_FLAG(std::string, data, "fashion-mnist", "fashion-mnist | mnist:DIR | csv:PATH | synthetic");
ABSL_FLAG(std::string, model, "mlp",
          "mlp (Linear+ReLU layers of --hidden sizes) | cnn (two 3x3 conv+pool blocks, then --hidden; "
          "the features must form a square image: 784 = 28x28, 64 = 8x8)");
ABSL_FLAG(std::string, hidden, "256,128", "hidden layer sizes, comma-separated");
ABSL_FLAG(int, epochs, 5, "maximum number of epochs (>= 1)");
ABSL_FLAG(int, batch_size, 64, "samples per batch on each rank (>= 1); the global batch is this times the ranks");
ABSL_FLAG(int64_t, global_batch, 0,
          "samples per step over all ranks (instead of --batch_size; each rank reads global_batch / ranks, which "
          "must divide it); fixed, it lets a run resume on another number of ranks");
ABSL_FLAG(bool, ledger, false,
          "each rank appends the ids of the samples it trained on (epoch, iteration) to OUTPUT_DIR/ledger/; "
          "'ckpt ledger OUTPUT_DIR' checks that every sample of every finished epoch was used exactly once");
ABSL_FLAG(double, lr, 0.05, "SGD learning rate (> 0)");
ABSL_FLAG(double, momentum, 0.9, "SGD momentum (>= 0, < 1)");
ABSL_FLAG(std::string, lr_schedule, "constant",
          "constant | cosine (--lr down to 0 over the run) | piecewise:ITERATION=LR,... (linear between milestones)");
ABSL_FLAG(int, accumulate, 1,
          "micro-batches per optimizer step (>= 1): gradients accumulated over them, then averaged over the ranks once");
ABSL_FLAG(double, bucket_mib, 16,
          "gradient bucket size in MiB, in (0, 1024]: one all-reduce per bucket (PyTorch DDP's bucket_cap_mb; "
          "tools/gpu/ddp_baseline.py --bucket_cap_mb takes the same number)");
ABSL_FLAG(bool, reduce_alone, false,
          "at world size 1, average the gradients through the communicator anyway (hooks, buckets, one all-reduce "
          "each), as PyTorch DDP does alone: for a fair side-by-side (on a GPU with --backend=nccl); no effect with "
          "several ranks");
ABSL_FLAG(double, clip_grad_norm, 0,
          "clip the averaged gradients to this global 2-norm before each optimizer step (0: no clipping)");
ABSL_FLAG(double, ema, 0,
          "keep an exponential moving average of the weights with this momentum (in (0, 1); 0: none), "
          "evaluated and checkpointed instead of the raw weights' evaluation");
ABSL_FLAG(std::string, precision, "float32",
          "float32 | bfloat16 (autocast of forward and loss, CPU or CUDA) | float16 (CUDA autocast with dynamic loss "
          "scaling)");
ABSL_FLAG(std::string, time_limit, "",
          "stop cleanly, with a checkpoint, before this budget runs out: SECONDS of this process, or 'slurm' "
          "(the job's end, SLURM_JOB_END_TIME); empty: none");
ABSL_FLAG(int64_t, warmup_iters, 0,
          "linear lr warm-up from 0 to --lr over this many iterations (0: none, else >= 2; constant and cosine)");
ABSL_FLAG(int64_t, seed, 0, "random seed (weights and data order)");
ABSL_FLAG(std::string, output_dir, "runs/train", "checkpoints and metrics.jsonl go here");
ABSL_FLAG(int, n_saved, 2, "best checkpoints kept, by validation accuracy (>= 1)");
ABSL_FLAG(bool, async_save, false,
          "write the epoch checkpoints on a background thread; the state is copied there too, while the next "
          "step's forward and backward run (the step waits before optimizer.step() only if the copy is not done)");
ABSL_FLAG(int, patience, 3, "early stopping patience in epochs (>= 1)");
ABSL_FLAG(bool, resume, false, "continue from the newest valid checkpoint in --output_dir");
ABSL_FLAG(std::string, resume_from, "",
          "continue from this checkpoint file (any torch.save file with the keys model, optimizer, trainer "
          "and early_stopping, e.g. one written in Python); new checkpoints go to --output_dir");
ABSL_FLAG(bool, eval_only, false,
          "with --resume or --resume_from: evaluate the checkpoint's weights on the held-out split on this "
          "job's ranks, print the metrics line and exit; nothing is written");
ABSL_FLAG(bool, start_over, false,
          "with --resume: when checkpoints are there but none is usable (corrupt ones are moved aside "
          "as NAME.pt.corrupt), train from scratch instead of failing");
ABSL_FLAG(std::string, backend, "auto", "auto | single | mpi | nccl | gloo");
ABSL_FLAG(std::string, device, "cpu", "cpu | cuda (the local rank picks the GPU)");
ABSL_FLAG(double, deadline_s, 120, "seconds a collective may wait for the other ranks");
ABSL_FLAG(double, init_timeout_s, 300, "seconds the start-up may wait for every rank to join (> 0)");
ABSL_FLAG(std::string, inject_nan, "", "testing aid: RANK:ITERATION makes that rank's loss NaN there");
ABSL_FLAG(std::string, inject_preempt, "", "testing aid: RANK:ITERATION sends SIGTERM to that rank there");
ABSL_FLAG(int, inject_step_delay_ms, 0,
          "testing aid: every rank sleeps this many ms after each step (a short run that lasts long enough to be "
          "signalled by a scheduler); the arithmetic is unchanged");
ABSL_FLAG(std::string, progress, "auto", "auto | bar | lines | none (rank 0 only)");
ABSL_FLAG(int, threads, 1, "intra-op threads per rank");

namespace ember::tools {
namespace {

// Bounds of flags whose absurd values would otherwise fail late (a NaN loss at the first step)
// or silently (a thousand threads per rank).
constexpr int kMaxThreads = 256;
constexpr double kMaxLr = 10.0;

// The flag `name` was given on the command line (not its default).
bool Given(const char* name) { return absl::flags_internal::WasPresentOnCommandLine(name); }

std::string UserDataSpec(const std::string& spec) {
  for (const char* prefix : {"mnist:", "csv:"}) {
    if (absl::StartsWith(spec, prefix)) return prefix + UserPath(spec.substr(std::string(prefix).size()));
  }
  return spec;
}

absl::Status ValidateFlags() {
  auto bad = [](const std::string& m) { return absl::InvalidArgumentError(m); };
  if (absl::GetFlag(FLAGS_epochs) < 1) return bad(absl::StrCat("--epochs must be >= 1, got ", absl::GetFlag(FLAGS_epochs)));
  if (absl::GetFlag(FLAGS_batch_size) < 1) {
    return bad(absl::StrCat("--batch_size must be >= 1, got ", absl::GetFlag(FLAGS_batch_size)));
  }
  const double lr = absl::GetFlag(FLAGS_lr);
  if (!(lr > 0) || !(lr <= kMaxLr)) return bad(absl::StrCat("--lr must be in (0, ", kMaxLr, "], got ", lr));
  const double m = absl::GetFlag(FLAGS_momentum);
  if (!(m >= 0 && m < 1)) return bad(absl::StrCat("--momentum must be in [0, 1), got ", m));
  if (absl::GetFlag(FLAGS_n_saved) < 1) return bad(absl::StrCat("--n_saved must be >= 1, got ", absl::GetFlag(FLAGS_n_saved)));
  if (absl::GetFlag(FLAGS_patience) < 1) return bad(absl::StrCat("--patience must be >= 1, got ", absl::GetFlag(FLAGS_patience)));
  if (!(absl::GetFlag(FLAGS_deadline_s) > 0)) {
    return bad(absl::StrCat("--deadline_s must be > 0, got ", absl::GetFlag(FLAGS_deadline_s)));
  }
  if (!(absl::GetFlag(FLAGS_init_timeout_s) > 0)) {
    return bad(absl::StrCat("--init_timeout_s must be > 0, got ", absl::GetFlag(FLAGS_init_timeout_s)));
  }
  if (absl::StatusOr<Progress::Mode> p = Progress::ParseMode(absl::GetFlag(FLAGS_progress)); !p.ok()) {
    return bad(absl::StrCat("--progress: ", p.status().message()));
  }
  const std::string d = absl::GetFlag(FLAGS_device);
  if (d != "cpu" && d != "cuda") return bad(absl::StrCat("--device='", d, "': allowed: cpu, cuda"));
  if (d == "cuda" && !torch::cuda::is_available()) {
    return bad("--device=cuda, but this LibTorch has no CUDA or no GPU is visible; use --device=cpu");
  }
  if (absl::GetFlag(FLAGS_threads) < 1 || absl::GetFlag(FLAGS_threads) > kMaxThreads) {
    return bad(absl::StrCat("--threads must be in [1, ", kMaxThreads, "], got ", absl::GetFlag(FLAGS_threads)));
  }
  if (absl::GetFlag(FLAGS_inject_step_delay_ms) < 0 || absl::GetFlag(FLAGS_inject_step_delay_ms) > 60000) {
    return bad(absl::StrCat("--inject_step_delay_ms must be in [0, 60000], got ", absl::GetFlag(FLAGS_inject_step_delay_ms)));
  }
  if (absl::GetFlag(FLAGS_accumulate) < 1) {
    return bad(absl::StrCat("--accumulate must be >= 1 (micro-batches per optimizer step), got ",
                            absl::GetFlag(FLAGS_accumulate)));
  }
  const double bucket_mib = absl::GetFlag(FLAGS_bucket_mib);
  if (!(bucket_mib > 0 && bucket_mib <= 1024) || std::llround(bucket_mib * 1048576.0) < 1) {
    return bad(absl::StrCat("--bucket_mib must be in (0, 1024] and at least one byte (MiB of gradients per all-reduce), got ",
                            bucket_mib));
  }
  const double clip = absl::GetFlag(FLAGS_clip_grad_norm);
  if (!(clip >= 0) || !std::isfinite(clip)) {
    return bad(absl::StrCat("--clip_grad_norm must be 0 (no clipping) or a finite norm > 0, got ", clip));
  }
  const double ema = absl::GetFlag(FLAGS_ema);
  if (!(ema >= 0 && ema < 1)) return bad(absl::StrCat("--ema must be 0 (none) or a momentum in (0, 1), got ", ema));
  const std::string precision = absl::GetFlag(FLAGS_precision);
  if (precision != "float32" && precision != "bfloat16" && precision != "float16") {
    return bad(absl::StrCat("--precision='", precision, "': allowed: float32, bfloat16, float16"));
  }
  if (precision == "float16" && d != "cuda") {
    return bad("--precision=float16 needs --device=cuda (CPU autocast supports bfloat16 only; use --precision=bfloat16)");
  }
  if (const std::string t = absl::GetFlag(FLAGS_time_limit); !t.empty() && t != "slurm") {
    int64_t seconds = 0;
    if (!absl::SimpleAtoi(t, &seconds) || seconds < 1) {
      return bad(absl::StrCat("--time_limit='", t, "': allowed: a whole number of seconds >= 1, or 'slurm'"));
    }
  }
  if (absl::GetFlag(FLAGS_output_dir).empty()) return bad("--output_dir is empty");
  if (absl::GetFlag(FLAGS_eval_only) && !absl::GetFlag(FLAGS_resume) && absl::GetFlag(FLAGS_resume_from).empty()) {
    return bad("--eval_only evaluates a checkpoint: give --resume or --resume_from=PATH too");
  }
  if (absl::GetFlag(FLAGS_resume) && !absl::GetFlag(FLAGS_resume_from).empty()) {
    return bad("give --resume (the newest checkpoint in --output_dir) or --resume_from=PATH, not both");
  }
  return absl::OkStatus();
}

}  // namespace

dist::SettingList RunDefiningFlags(const std::string& flag_error) {
  dist::SettingList list;
  for (const char* name : {"data", "model", "hidden", "seed", "epochs", "batch_size", "global_batch", "lr", "momentum",
                           "lr_schedule", "warmup_iters", "accumulate", "bucket_mib", "reduce_alone", "clip_grad_norm", "ema", "precision",
                           "time_limit", "patience", "n_saved", "async_save", "ledger", "output_dir", "resume", "resume_from",
                           "start_over", "eval_only", "backend", "device", "inject_nan", "inject_preempt"}) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    const std::string value = flag != nullptr ? flag->CurrentValue() : "(unknown)";
    // Whether --lr and --momentum were given changes what a resume does (a given value replaces
    // the checkpoint's; a default keeps it), so for them "given" is part of the setting; for the
    // others only the value is (--n_saved=2 and the default 2 are the same run).
    const bool givenness_matters = std::string_view(name) == "lr" || std::string_view(name) == "momentum";
    list.Add(absl::StrCat("--", name), !givenness_matters || Given(name) ? value : absl::StrCat(value, " (default)"));
  }
  if (!flag_error.empty()) list.Add("flag error", flag_error);
  return list;
}

dist::LaunchOptions LaunchOptionsFromFlags() {
  const double init_timeout_s = absl::GetFlag(FLAGS_init_timeout_s);
  return {.backend = absl::GetFlag(FLAGS_backend),
          .device = absl::GetFlag(FLAGS_device),
          .init_timeout = init_timeout_s > 0 ? absl::Seconds(init_timeout_s) : dist::LaunchOptions{}.init_timeout};
}

absl::StatusOr<TrainFlags> ReadTrainFlags(int world_size) {
  EMBER_RETURN_IF_ERROR(ValidateFlags());
  TrainFlags f;
  f.data = UserDataSpec(absl::GetFlag(FLAGS_data));
  f.model = absl::GetFlag(FLAGS_model);
  f.hidden_text = absl::GetFlag(FLAGS_hidden);
  EMBER_ASSIGN_OR_RETURN(f.hidden, ParseHidden(f.hidden_text));
  EMBER_ASSIGN_OR_RETURN(f.inject_nan, ParseRankIteration("inject_nan", absl::GetFlag(FLAGS_inject_nan), world_size));
  EMBER_ASSIGN_OR_RETURN(f.inject_preempt,
                         ParseRankIteration("inject_preempt", absl::GetFlag(FLAGS_inject_preempt), world_size));
  f.epochs = absl::GetFlag(FLAGS_epochs);
  // The global batch is what a step means; each rank reads its share of it.
  f.batch_size = absl::GetFlag(FLAGS_batch_size);
  f.global_batch = absl::GetFlag(FLAGS_global_batch);
  f.global_batch_given = f.global_batch > 0;
  if (f.global_batch > 0) {
    if (Given("batch_size")) {
      return absl::InvalidArgumentError(absl::StrCat("--global_batch=", f.global_batch, " and --batch_size=",
                                                     f.batch_size,
                                                     " both given: give one (the global batch is the per-rank batch "
                                                     "times the ranks)"));
    }
    if (f.global_batch % world_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--global_batch=", f.global_batch, " is not divisible by the ", world_size,
          " rank(s) of this job: every rank reads the same share of each global batch; use a multiple of ",
          world_size, " or another number of ranks"));
    }
    f.batch_size = static_cast<int>(f.global_batch / world_size);
  } else {
    f.global_batch = int64_t{f.batch_size} * world_size;
  }
  f.ledger = absl::GetFlag(FLAGS_ledger);
  f.lr = absl::GetFlag(FLAGS_lr);
  f.lr_given = Given("lr");
  f.momentum = absl::GetFlag(FLAGS_momentum);
  f.momentum_given = Given("momentum");
  f.accumulate = absl::GetFlag(FLAGS_accumulate);
  f.bucket_bytes = std::llround(absl::GetFlag(FLAGS_bucket_mib) * 1048576.0);
  f.reduce_alone = absl::GetFlag(FLAGS_reduce_alone);
  f.clip_grad_norm = absl::GetFlag(FLAGS_clip_grad_norm);
  f.precision = absl::GetFlag(FLAGS_precision);
  f.ema = absl::GetFlag(FLAGS_ema);
  f.time_limit = absl::GetFlag(FLAGS_time_limit);
  EMBER_ASSIGN_OR_RETURN(f.lr_schedule,
                         ParseLrSchedule(absl::GetFlag(FLAGS_lr_schedule), absl::GetFlag(FLAGS_warmup_iters)));
  f.seed = absl::GetFlag(FLAGS_seed);
  f.output_dir = UserPath(absl::GetFlag(FLAGS_output_dir));
  f.n_saved = absl::GetFlag(FLAGS_n_saved);
  f.async_save = absl::GetFlag(FLAGS_async_save);
  f.patience = absl::GetFlag(FLAGS_patience);
  f.resume = absl::GetFlag(FLAGS_resume);
  f.resume_from = UserPath(absl::GetFlag(FLAGS_resume_from));
  f.eval_only = absl::GetFlag(FLAGS_eval_only);
  f.start_over = absl::GetFlag(FLAGS_start_over);
  f.backend = absl::GetFlag(FLAGS_backend);
  f.device = absl::GetFlag(FLAGS_device);
  f.deadline = absl::Seconds(absl::GetFlag(FLAGS_deadline_s));
  f.step_delay = absl::Milliseconds(absl::GetFlag(FLAGS_inject_step_delay_ms));
  EMBER_ASSIGN_OR_RETURN(f.progress, Progress::ParseMode(absl::GetFlag(FLAGS_progress)));
  f.threads = absl::GetFlag(FLAGS_threads);
  return f;
}

bool HandleHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-help" || arg == "-h" || arg == "--helpshort") {
      absl::flags_internal::SetProgramInvocationName(argv[0]);
      absl::flags_internal::FlagsHelp(std::cout, "tools/train_flags.", absl::flags_internal::HelpFormat::kHumanReadable,
                                      absl::ProgramUsageMessage());
      return true;
    }
  }
  return false;
}

absl::StatusOr<std::vector<int64_t>> ParseHidden(const std::string& text) {
  std::vector<int64_t> sizes;
  if (text.empty()) {
    return absl::InvalidArgumentError("--hidden is empty; give the hidden layer sizes, e.g. --hidden=256,128");
  }
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int64_t v;
    if (!absl::SimpleAtoi(part, &v) || v < 1 || v > 1 << 16) {
      return absl::InvalidArgumentError(absl::StrCat("--hidden='", text, "': '", part,
                                                     "' is not a layer size (1-65536); example: --hidden=256,128"));
    }
    sizes.push_back(v);
  }
  return sizes;
}

absl::StatusOr<RankIteration> ParseRankIteration(const char* flag, const std::string& text, int world) {
  if (text.empty()) return RankIteration{};
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  RankIteration at;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &at.rank) || !absl::SimpleAtoi(parts[1], &at.iteration) ||
      at.rank < 0 || at.rank >= world || at.iteration < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, "='", text, "': expected RANK:ITERATION with RANK in [0, ",
                                                   world, ") and ITERATION >= 1"));
  }
  return at;
}

std::string UserPath(const std::string& path) {
  const char* cwd = std::getenv("BUILD_WORKING_DIRECTORY");
  if (path.empty() || path[0] == '/' || cwd == nullptr) return path;
  return JoinPath(cwd, path);
}

}  // namespace ember::tools
