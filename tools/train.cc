// train: Ember's distributed trainer. Data-parallel SGD of an MLP classifier: every rank trains on
// its shard, gradients are all-reduced every step (bucketed: one collective per bucket), each epoch
// ends with an evaluation on the held-out split whose metrics are all-reduced; ModelCheckpoint,
// EarlyStopping, TerminateOnNan, a Timer, progress on rank 0 and a JSON-lines metrics log.
//
//   bazel run --run_under="mpirun -np 4 --oversubscribe" //tools:train -- --epochs=3
//   bazel run //tools:train -- --data=synthetic --epochs=5          (one process)
//
// Each rank prints one final JSON line: {"rank", "world_size", "epoch", "iteration", "stopped_by",
// "best_checkpoint", "latest_checkpoint", "best_score"}. Exit code: 0 completed, early stopping or
// preemption; 3 terminate_on_nan; 1 errors (bad flags, data, output directory, a failed collective
// or save).
#include <torch/torch.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <iostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/internal/parse.h"
#include "absl/flags/internal/program_name.h"
#include "absl/flags/internal/usage.h"
#include "absl/flags/usage.h"
#include "nlohmann/json.hpp"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/directory_lock.h"
#include "base/file_system.h"
#include "base/status_macros.h"
#include "distributed/launch.h"
#include "distributed/launcher_env.h"
#include "distributed/root_action.h"
#include "engine/engine.h"
#include "handlers/checkpoint/global_step.h"
#include "handlers/checkpoint/model_checkpoint.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/early_stopping.h"
#include "handlers/metrics.h"
#include "handlers/metrics_log.h"
#include "handlers/preemption.h"
#include "handlers/progress.h"
#include "handlers/parallel/sharded_source.h"
#include "handlers/checkpoint/stateful.h"
#include "handlers/terminate_on_nan.h"
#include "handlers/timer.h"
#include "handlers/serialization/torch_save.h"
#include "tools/data.h"
#include "tools/ledger.h"

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
ABSL_FLAG(std::string, backend, "auto", "auto | single | mpi | nccl");
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

struct Batch {
  torch::Tensor x, y;
};

// The settings that decide what a resumed run means, saved in every checkpoint as "run" and
// checked on resume: another global batch would change what a step and an epoch are. The number
// of ranks may change (the sample order does not depend on it; see ShardedSource).
class RunSettings : public Stateful {
 public:
  RunSettings(int64_t global_batch, int batch_size, int world_size)
      : global_batch_(global_batch), batch_size_(batch_size), world_size_(world_size) {}
  Value StateDict() const override {
    Value v = Value::Dict();
    v.Set("global_batch", Value(global_batch_));
    v.Set("batch_size", Value(int64_t{batch_size_}));
    v.Set("world_size", Value(int64_t{world_size_}));
    return v;
  }
  absl::Status LoadStateDict(const Value&) override { return absl::OkStatus(); }  // see Check

  // `run` is the checkpoint's "run" record (nullptr: a checkpoint without one, e.g. written in
  // Python; then the epoch lengths are compared).
  absl::Status Check(const Value* run, const std::string& from, int64_t old_epoch_length,
                     int64_t new_epoch_length) const {
    auto stored = [&](const char* key) -> std::optional<int64_t> {
      const Value* v = run != nullptr ? run->Find(key) : nullptr;
      if (v == nullptr || !v->is_int()) return std::nullopt;
      return v->as_int();
    };
    std::optional<int64_t> global = stored("global_batch");
    if (!global && stored("batch_size") && stored("world_size")) global = *stored("batch_size") * *stored("world_size");
    if (global && *global != global_batch_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "this run's global batch is ", global_batch_, " (", batch_size_, " per rank x ", world_size_,
          " rank(s)) but ", from, " was trained with a global batch of ", *global,
          ": a step and an epoch depend on it; resume with --global_batch=", *global,
          " (on any number of ranks that divides it), or train anew in another --output_dir"));
    }
    if (run == nullptr && old_epoch_length != new_epoch_length) {
      return absl::FailedPreconditionError(absl::StrCat(
          from, " has epochs of ", old_epoch_length, " iterations but this run's have ", new_epoch_length,
          ": --batch_size, --global_batch or the number of ranks differs from the run that wrote it"));
    }
    return absl::OkStatus();
  }

 private:
  int64_t global_batch_;
  int batch_size_;
  int world_size_;
};

// The flag `name` was given on the command line (not its default).
bool Given(const char* name) { return absl::flags_internal::WasPresentOnCommandLine(name); }

// Reads a checkpoint file on rank 0 and gives every rank its content.
absl::StatusOr<Value> ReadOnRootAndShare(dist::Communicator& comm, const std::string& path, absl::Time deadline) {
  std::string bytes;
  EMBER_RETURN_IF_ERROR(dist::RunOnRoot(comm, 0, deadline, [&]() -> absl::Status {
    EMBER_ASSIGN_OR_RETURN(bytes, FileSystem::Default()->ReadFile(path));
    return ReadTorchSave(bytes, path).status();  // every check, before sharing
  }));
  EMBER_RETURN_IF_ERROR(comm.Broadcast(bytes, 0, deadline));
  return ReadTorchSave(bytes, path);
}

// Rank 0 owns --output_dir for the run: it creates it, locks it (a second trainer on the same
// directory, or a requeued job while the ranks of a killed one still wind down, waits up to
// kLockWait and then fails naming the holder) and, without --resume, refuses a directory that
// already holds a run. Every rank gets the verdict.
constexpr absl::Duration kLockWait = absl::Seconds(10);

absl::Status TakeOutputDir(dist::Communicator& comm, const std::string& dir, bool resuming, absl::Time deadline,
                           std::unique_ptr<DirectoryLock>* lock) {
  return dist::RunOnRoot(comm, 0, deadline, [&]() -> absl::Status {
    FileSystem* fs = FileSystem::Default();
    if (fs->Exists(dir) && !fs->IsDirectory(dir)) {
      return absl::FailedPreconditionError(absl::StrCat("--output_dir=", dir, " is not a directory"));
    }
    EMBER_RETURN_IF_ERROR(fs->CreateDirs(dir));
    absl::StatusOr<std::unique_ptr<DirectoryLock>> locked = DirectoryLock::Acquire(dir, kLockWait);
    if (!locked.ok()) {
      return absl::Status(locked.status().code(),
                          absl::StrCat("--output_dir: ", locked.status().message(),
                                       "; wait for that run to end, or choose another --output_dir"));
    }
    *lock = *std::move(locked);
    if (resuming) return absl::OkStatus();
    EMBER_ASSIGN_OR_RETURN(std::vector<std::string> names, fs->ListDir(dir));
    std::vector<std::string> runs;
    for (const std::string& n : names) {
      if (n == "metrics.jsonl" || absl::EndsWith(n, ".pt") || absl::StrContains(n, ".pt.corrupt")) runs.push_back(n);
    }
    std::sort(runs.begin(), runs.end());
    if (runs.empty()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "--output_dir=", dir, " already holds a run (", absl::StrJoin(runs, ", "),
        "): pass --resume to continue it, or choose another --output_dir"));
  });
}

// The number of held-out samples evaluated, over every rank (a metric of our own).
class SampleCount final : public Metric {
 public:
  size_t num_sums() const override { return 1; }
  absl::Status Update(const Engine& e, absl::Span<double> sums) override {
    sums[0] += static_cast<double>(e.state().output_as<Prediction>()->y.size(0));
    return absl::OkStatus();
  }
  double Compute(absl::Span<const double> sums) const override { return sums[0]; }
};

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

// --model: an MLP, or a small convolutional network over the features seen as a square image.
absl::StatusOr<torch::nn::Sequential> BuildModel(const std::string& kind, int64_t features,
                                                 const std::vector<int64_t>& hidden, int64_t classes) {
  torch::nn::Sequential model;
  int64_t in = features;
  if (kind == "cnn") {
    const int64_t side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(features))));
    if (side * side != features || side < 4) {
      return absl::InvalidArgumentError(absl::StrCat("--model=cnn needs square images of at least 4x4, but the data has ",
                                                     features, " features per sample; use --model=mlp"));
    }
    model->push_back(torch::nn::Unflatten(torch::nn::UnflattenOptions(1, {1, side, side})));
    model->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1)));
    model->push_back(torch::nn::ReLU());
    model->push_back(torch::nn::MaxPool2d(2));
    model->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1)));
    model->push_back(torch::nn::ReLU());
    model->push_back(torch::nn::MaxPool2d(2));
    model->push_back(torch::nn::Flatten());
    in = 32 * (side / 4) * (side / 4);
  } else if (kind != "mlp") {
    return absl::InvalidArgumentError(absl::StrCat("--model='", kind, "': allowed: mlp, cnn"));
  }
  for (int64_t h : hidden) {
    model->push_back(torch::nn::Linear(in, h));
    model->push_back(torch::nn::ReLU());
    in = h;
  }
  model->push_back(torch::nn::Linear(in, classes));
  return model;
}

struct RankIteration {
  int rank = -1;
  int64_t iteration = -1;
};

// A testing aid's RANK:ITERATION (`flag` names it in the error).
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
  if (absl::GetFlag(FLAGS_output_dir).empty()) return bad("--output_dir is empty");
  if (absl::GetFlag(FLAGS_eval_only) && !absl::GetFlag(FLAGS_resume) && absl::GetFlag(FLAGS_resume_from).empty()) {
    return bad("--eval_only evaluates a checkpoint: give --resume or --resume_from=PATH too");
  }
  if (absl::GetFlag(FLAGS_resume) && !absl::GetFlag(FLAGS_resume_from).empty()) {
    return bad("give --resume (the newest checkpoint in --output_dir) or --resume_from=PATH, not both");
  }
  return absl::OkStatus();
}

// `bazel run` starts the binary in its runfiles tree; relative paths mean the user's directory.
std::string UserPath(const std::string& path) {
  const char* cwd = std::getenv("BUILD_WORKING_DIRECTORY");
  if (path.empty() || path[0] == '/' || cwd == nullptr) return path;
  return JoinPath(cwd, path);
}

std::string UserDataSpec(const std::string& spec) {
  for (const char* prefix : {"mnist:", "csv:"}) {
    if (absl::StartsWith(spec, prefix)) return prefix + UserPath(spec.substr(std::string(prefix).size()));
  }
  return spec;
}

// A JSON string (every control character escaped), or null.
std::string JsonString(const std::optional<std::string>& s) {
  if (!s) return "null";
  return nlohmann::json(*s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Every exit prints one final line per rank, even abseil's own exit on a malformed flag.
std::atomic<bool> g_final_printed{false};

void PrintFinalLine(int rank, int world_size, int64_t epoch, int64_t iteration, const std::string& stopped_by,
                    const std::optional<std::string>& best, const std::optional<std::string>& latest,
                    std::optional<double> best_score) {
  g_final_printed = true;
  std::printf("{\"rank\": %d, \"world_size\": %d, \"epoch\": %lld, \"iteration\": %lld, \"stopped_by\": \"%s\", "
              "\"best_checkpoint\": %s, \"latest_checkpoint\": %s, \"best_score\": %s}\n",
              rank, world_size, static_cast<long long>(epoch), static_cast<long long>(iteration), stopped_by.c_str(),
              JsonString(best).c_str(), JsonString(latest).c_str(),
              best_score ? absl::StrFormat("%.6f", *best_score).c_str() : "null");
  std::fflush(stdout);
}

void FinalLineAtExit() {
  if (g_final_printed) return;
  absl::StatusOr<dist::LaunchInfo> info = dist::ReadLaunchInfo();
  PrintFinalLine(info.ok() ? info->rank : 0, info.ok() ? info->world_size : 1, 0, 0, "error", std::nullopt,
                 std::nullopt, std::nullopt);
}

struct Outcome {
  std::string stopped_by = "error";
  int exit_code = 1;
};

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Ember's distributed trainer: data-parallel SGD of an MLP classifier.");
  // --help is a request, not an error: print the trainer's flags and exit 0 (abseil's own
  // handling exits 1).
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-help" || arg == "-h" || arg == "--helpshort") {
      absl::flags_internal::SetProgramInvocationName(argv[0]);
      absl::flags_internal::FlagsHelp(std::cout, "tools/train.", absl::flags_internal::HelpFormat::kHumanReadable,
                                      absl::ProgramUsageMessage());
      return 0;
    }
  }
  std::atexit(FinalLineAtExit);
  absl::ParseCommandLine(argc, argv);
  Preemption preemption;  // SIGTERM, SIGINT, SIGUSR1 on any rank: every rank stops and saves

  // The World is the default communicator of every engine and checkpoint created below.
  // A bad --init_timeout_s is reported with the other flags (ValidateFlags); the launch then waits
  // the default.
  const double init_timeout_s = absl::GetFlag(FLAGS_init_timeout_s);
  absl::StatusOr<std::unique_ptr<dist::World>> world = dist::LaunchWorld(
      {.backend = absl::GetFlag(FLAGS_backend),
       .device = absl::GetFlag(FLAGS_device),
       .init_timeout = init_timeout_s > 0 ? absl::Seconds(init_timeout_s) : dist::LaunchOptions{}.init_timeout});
  std::unique_ptr<DirectoryLock> dir_lock;  // rank 0: --output_dir is ours until exit
  if (!world.ok()) {
    std::fprintf(stderr, "train: error: %s\n", std::string(world.status().message()).c_str());
    return 1;  // the final line comes from FinalLineAtExit
  }
  dist::Communicator& comm = (*world)->communicator();
  const int rank = comm.rank();
  const int world_size = comm.world_size();
  const absl::Duration deadline = absl::Seconds(absl::GetFlag(FLAGS_deadline_s));
  Outcome outcome;
  std::optional<std::string> best, latest;
  std::optional<double> best_score;
  int64_t final_epoch = 0, final_iteration = 0;

  auto fail = [&](const absl::Status& s) {
    std::fprintf(stderr, "train: rank %d: error: %s\n", rank, std::string(s.message()).c_str());
    outcome = Outcome{};
  };

  absl::Status status = [&]() -> absl::Status {
    EMBER_RETURN_IF_ERROR(ValidateFlags());
    torch::set_num_threads(absl::GetFlag(FLAGS_threads));
    EMBER_ASSIGN_OR_RETURN(std::vector<int64_t> hidden, ParseHidden(absl::GetFlag(FLAGS_hidden)));
    EMBER_ASSIGN_OR_RETURN(RankIteration nan_at, ParseRankIteration("inject_nan", absl::GetFlag(FLAGS_inject_nan), world_size));
    EMBER_ASSIGN_OR_RETURN(RankIteration preempt_at,
                           ParseRankIteration("inject_preempt", absl::GetFlag(FLAGS_inject_preempt), world_size));
    const uint64_t seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
    // The global batch is what a step means; each rank reads its share of it.
    int batch_size = absl::GetFlag(FLAGS_batch_size);
    int64_t global_batch = absl::GetFlag(FLAGS_global_batch);
    if (global_batch > 0) {
      if (Given("batch_size")) {
        return absl::InvalidArgumentError(absl::StrCat("--global_batch=", global_batch, " and --batch_size=", batch_size,
                                                       " both given: give one (the global batch is the per-rank batch "
                                                       "times the ranks)"));
      }
      if (global_batch % world_size != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--global_batch=", global_batch, " is not divisible by the ", world_size,
            " rank(s) of this job: every rank reads the same share of each global batch; use a multiple of ",
            world_size, " or another number of ranks"));
      }
      batch_size = static_cast<int>(global_batch / world_size);
    } else {
      global_batch = int64_t{batch_size} * world_size;
    }
    EMBER_ASSIGN_OR_RETURN(Dataset data, LoadDataset(UserDataSpec(absl::GetFlag(FLAGS_data)), seed));
    if (data.train.size() < global_batch) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", data.train.size(), " training samples of ", data.name, " cannot be sharded over ", world_size,
          " ranks with --batch_size=", batch_size, " (each rank needs at least one full batch)"));
    }
    if (data.val.size() < world_size) {
      return absl::InvalidArgumentError(absl::StrCat("the validation split has ", data.val.size(),
                                                     " samples, fewer than the ", world_size, " ranks"));
    }
    torch::Device device = absl::GetFlag(FLAGS_device) == "cuda"
                               ? torch::Device(torch::kCUDA, comm.local_rank())  // Launch checked one GPU per local rank
                               : torch::Device(torch::kCPU);

    // The model; the same initial weights on every rank (and DataParallel broadcasts rank 0's).
    torch::manual_seed(seed);
    EMBER_ASSIGN_OR_RETURN(torch::nn::Sequential model,
                           BuildModel(absl::GetFlag(FLAGS_model), data.train.x.size(1), hidden, data.num_classes));
    model->to(device);
    torch::optim::SGD optimizer(model->parameters(),
                                torch::optim::SGDOptions(absl::GetFlag(FLAGS_lr)).momentum(absl::GetFlag(FLAGS_momentum)));
    // Parameters broadcast from rank 0; gradients averaged in buckets (one collective each).
    DataParallel ddp(*model, {.deadline = deadline});
    EMBER_RETURN_IF_ERROR(ddp.status());

    const absl::Duration step_delay = absl::Milliseconds(absl::GetFlag(FLAGS_inject_step_delay_ms));
    int64_t epoch_samples = 0;  // this rank's, this epoch (a partial last batch counts its real size)
    Engine trainer([&](Engine& e, const Batch& b) -> absl::StatusOr<double> {
      epoch_samples += b.y.size(0);
      optimizer.zero_grad();
      torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(b.x.to(device)), b.y.to(device));
      loss.backward();
      double output = loss.item<double>();
      if (rank == nan_at.rank && e.state().iteration == nan_at.iteration) output = std::nan("");
      if (rank == preempt_at.rank && e.state().iteration == preempt_at.iteration) ::raise(SIGTERM);
      // The iteration's agreement (TerminateOnNan, Preemption) rides in the last gradient bucket.
      EMBER_RETURN_IF_ERROR(ddp.AllReduceGradients(e, output));
      optimizer.step();
      if (step_delay > absl::ZeroDuration()) absl::SleepFor(step_delay);
      return output;
    });
    trainer.set_collective_timeout(deadline);
    // This rank's share of each global batch (batch_size samples of every rank), in an order drawn
    // from (seed, epoch) alone; its position is saved in each checkpoint as "data".
    EMBER_ASSIGN_OR_RETURN(
        std::unique_ptr<ShardedSource<Batch>> train_source_ptr,
        ShardedSource<Batch>::Create(
            {.dataset_size = data.train.size(), .global_batch = global_batch, .seed = seed},
            [&](const torch::Tensor& ids) { return Batch{data.train.x.index_select(0, ids), data.train.y.index_select(0, ids)}; },
            &comm));
    ShardedSource<Batch>& train_source = *train_source_ptr;
    torch::Tensor ledger_ids;  // this rank's ids of the current batch (--ledger)

    // Evaluation on this rank's shard of the held-out split; the sums are all-reduced. The shards
    // cover every sample exactly once whatever the world size (their sizes differ by at most one).
    const int64_t val_begin = data.val.size() * rank / world_size;
    const int64_t val_end = data.val.size() * (rank + 1) / world_size;
    std::vector<Batch> val_batches;
    for (int64_t at = val_begin; at < val_end; at += 512) {
      const int64_t end = std::min(val_end, at + 512);
      val_batches.push_back({data.val.x.slice(0, at, end), data.val.y.slice(0, at, end)});
    }
    Engine evaluator([&](Engine&, const Batch& b) {
      torch::NoGradGuard no_grad;
      return Prediction{model->forward(b.x.to(device)), b.y.to(device)};
    });
    evaluator.set_collective_timeout(deadline);
    // Every rank's sums, all-reduced in one collective at COMPLETED.
    Metrics metrics;
    metrics.Add("val_loss", Loss([](const torch::Tensor& p, const torch::Tensor& y) {
             return torch::nn::functional::cross_entropy(p, y);
           }))
        .Add("val_accuracy", Accuracy())
        .Add("val_samples", SampleCount());
    EMBER_RETURN_IF_ERROR(metrics.Attach(evaluator));
    evaluator.On(Events::Completed(), [&](Engine& e) { trainer.state().metrics = e.state().metrics; });

    // Handlers, constructed the same way on every rank.
    TerminateOnNan ton;
    trainer.On(Events::IterationCompleted(), ton);
    trainer.On(Events::IterationCompleted(), preemption);
    Timer timer(/*average=*/true);
    EMBER_RETURN_IF_ERROR(timer.Attach(trainer, {.start = Events::EpochStarted(), .pause = Events::IterationCompleted(),
                                                 .resume = Events::IterationStarted(), .step = Events::IterationCompleted()}));
    EMBER_ASSIGN_OR_RETURN(std::unique_ptr<EarlyStopping> es,
                           EarlyStopping::Create({.patience = absl::GetFlag(FLAGS_patience), .score_name = "val_accuracy"}, trainer));
    const std::string out_dir = UserPath(absl::GetFlag(FLAGS_output_dir));
    const std::string resume_from = UserPath(absl::GetFlag(FLAGS_resume_from));
    const bool resuming = absl::GetFlag(FLAGS_resume) || !resume_from.empty();
    const bool eval_only = absl::GetFlag(FLAGS_eval_only);
    if (!eval_only) EMBER_RETURN_IF_ERROR(TakeOutputDir(comm, out_dir, resuming, absl::Now() + deadline, &dir_lock));
    RunSettings settings(global_batch, batch_size, world_size);
    // What every checkpoint of the run holds, epoch-end and preemption alike.
    const ObjectMap to_save = {{"model", *model},     {"optimizer", optimizer}, {"trainer", trainer},
                               {"early_stopping", *es}, {"data", train_source},   {"run", settings}};
    EMBER_ASSIGN_OR_RETURN(
        std::unique_ptr<Checkpoint> ckpt,
        ModelCheckpoint::Create({.disk = {.dirname = out_dir, .require_empty = !resuming}, .checkpoint = {.score_name = "val_accuracy", .n_saved = absl::GetFlag(FLAGS_n_saved), .keep_last = 1, .global_step_transform = GlobalStepFromEngine(trainer), .async_save = absl::GetFlag(FLAGS_async_save), .snapshot_in_background = absl::GetFlag(FLAGS_async_save)}},
                              to_save));
    // A preemption stops the run mid-epoch: its state goes to a checkpointer of its own (the
    // newest only, named by the iteration), so that neither the best-score ranking nor
    // EarlyStopping sees an evaluation the uninterrupted run would not have made.
    EMBER_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> preempt_ckpt,
                           ModelCheckpoint::Create({.disk = {.dirname = out_dir, .require_empty = false},
                                                    .checkpoint = {.filename_prefix = "preempted", .n_saved = 1}},
                                                   to_save));
    // Whatever ends the run (an error included), the final line reports the checkpoints on disk.
    struct Report {
      Checkpoint& ckpt;
      std::optional<std::string>& best;
      std::optional<std::string>& latest;
      std::optional<double>& best_score;
      ~Report() {
        best = ckpt.last_checkpoint();
        latest = ckpt.latest_checkpoint();
        best_score = ckpt.best_score();
      }
    } report{*ckpt, best, latest, best_score};
    // Training throughput is measured up to here, before the evaluation.
    double epoch_seconds = 0;
    absl::Time epoch_start = absl::Now();
    trainer.On(Events::EpochStarted(), [&] { epoch_start = absl::Now(); });
    trainer.On(Events::EpochCompleted(), [&] { epoch_seconds = absl::ToDoubleSeconds(absl::Now() - epoch_start); });
    trainer.On(Events::EpochCompleted(), [&]() -> absl::Status { return evaluator.Run(val_batches); });

    // Rank 0: progress and the metrics log.
    EMBER_ASSIGN_OR_RETURN(Progress::Mode progress_mode, Progress::ParseMode(absl::GetFlag(FLAGS_progress)));
    Progress progress({.mode = progress_mode});
    EMBER_RETURN_IF_ERROR(progress.Attach(trainer));
    trainer.On(Events::EpochStarted(), [&] { epoch_samples = 0; });
    // Goodput: where each epoch's wall time went (training, evaluation and the checkpoint
    // included), from the checkpointer's and the communicator's counters.
    struct Spent {
      absl::Time at;
      absl::Duration blocked, background, collectives;
    };
    auto spent_now = [&] {
      return Spent{absl::Now(), ckpt->blocked_time(), ckpt->background_write_time(), comm.collective_time()};
    };
    Spent epoch_began = spent_now();
    trainer.On(Events::EpochStarted(), [&] { epoch_began = spent_now(); });
    std::unique_ptr<MetricsLog> metrics_log;  // rank 0
    trainer.On(Events::EpochCompleted(), [&](Engine& e) {
      if (rank != 0) return;
      auto& m = e.state().metrics;
      nlohmann::ordered_json line = {
          {"epoch", e.state().epoch},
          {"iteration", e.state().iteration},
          {"train_loss", progress.epoch_mean_output()},
          {"val_loss", m["val_loss"]},
          {"val_accuracy", m["val_accuracy"]},
          {"val_samples", static_cast<int64_t>(m["val_samples"])},
          {"train_samples", epoch_samples * world_size},  // every rank's shard has the same size
          {"samples_per_s", static_cast<double>(epoch_samples) * world_size / epoch_seconds},
          {"world_size", world_size},
          {"time_per_iteration_s", timer.value()}};
      const Spent now = spent_now();
      const double epoch_s = absl::ToDoubleSeconds(now.at - epoch_began.at);
      const double blocked_s = absl::ToDoubleSeconds(now.blocked - epoch_began.blocked);
      line["epoch_s"] = epoch_s;
      line["checkpoint_blocked_s"] = blocked_s;
      line["checkpoint_blocked_share"] = epoch_s > 0 ? blocked_s / epoch_s : 0.0;
      line["checkpoint_background_s"] = absl::ToDoubleSeconds(now.background - epoch_began.background);
      line["collectives_s"] = absl::ToDoubleSeconds(now.collectives - epoch_began.collectives);
      if (absl::Status s = metrics_log->Append(line); !s.ok()) {
        std::fprintf(stderr, "train: warning: %s\n", std::string(s.message()).c_str());
      }
      progress.Line(MetricsLog::Format(line));
    });

    std::optional<std::string> from;
    if (resuming) {
      Value loaded;
      // The settings record is checked, not loaded (a checkpoint written in Python has none).
      const ObjectMap to_load = {
          {"model", *model}, {"optimizer", optimizer}, {"trainer", trainer}, {"early_stopping", *es}};
      if (!resume_from.empty()) {
        EMBER_ASSIGN_OR_RETURN(loaded, ReadOnRootAndShare(comm, resume_from, absl::Now() + deadline));
        EMBER_RETURN_IF_ERROR(Checkpoint::LoadObjects(to_load, loaded));
        from = resume_from;
      } else {
        absl::StatusOr<std::optional<std::string>> resumed =
            ckpt->ResumeLatest(comm, &to_load, absl::GetFlag(FLAGS_start_over), &loaded);
        if (!resumed.ok()) {
          return absl::Status(resumed.status().code(),
                              absl::StrCat(resumed.status().message(),
                                           " (--start_over trains from scratch, keeping those files; "
                                           "--resume_from=PATH continues from one file you choose)"));
        }
        from = *resumed;
        // A preemption's checkpoint newer than the newest epoch-end one takes over.
        Value preempted;
        const ObjectMap nothing;
        EMBER_ASSIGN_OR_RETURN(std::optional<std::string> at,
                               preempt_ckpt->ResumeLatest(comm, &nothing, /*start_over_if_unusable=*/true, &preempted));
        const Value* its_trainer = at ? preempted.Find("trainer") : nullptr;
        const Value* its_iteration = its_trainer != nullptr ? its_trainer->Find("iteration") : nullptr;
        if (its_iteration != nullptr && its_iteration->is_int() &&
            (!from || its_iteration->as_int() > trainer.state().iteration)) {
          EMBER_RETURN_IF_ERROR(Checkpoint::LoadObjects(to_load, preempted));
          loaded = std::move(preempted);
          from = at;
        }
      }
      if (rank == 0) {
        std::fprintf(stderr, "%s\n", from ? absl::StrCat("resumed from ", *from).c_str()
                                          : "no checkpoint to resume from: starting fresh");
      }
      if (from && !eval_only) {
        const int64_t epoch_length = *train_source.size();
        EMBER_RETURN_IF_ERROR(
            settings.Check(loaded.Find("run"), *from, trainer.state().epoch_length.value_or(epoch_length), epoch_length));
        // The position in the sample order (absent from checkpoints written in Python).
        if (const Value* position = loaded.Find("data")) EMBER_RETURN_IF_ERROR(train_source.LoadStateDict(*position));
        // The learning rate and momentum: a value given on the command line replaces the
        // checkpoint's; otherwise the checkpoint's stays.
        auto sgd = [&](size_t group) -> torch::optim::SGDOptions& {
          return static_cast<torch::optim::SGDOptions&>(optimizer.param_groups()[group].options());
        };
        for (const auto& [name, flag] : {std::pair<const char*, double>{"lr", absl::GetFlag(FLAGS_lr)},
                                         std::pair<const char*, double>{"momentum", absl::GetFlag(FLAGS_momentum)}}) {
          const bool is_lr = std::string_view(name) == "lr";
          const double stored = is_lr ? sgd(0).lr() : sgd(0).momentum();
          if (stored == flag) continue;
          const bool given = Given(name);
          for (size_t g = 0; given && g < optimizer.param_groups().size(); ++g) {
            is_lr ? (void)sgd(g).lr(flag) : (void)sgd(g).momentum(flag);
          }
          if (rank == 0) {
            const std::string said = given ? absl::StrCat("--", name, "=", flag, " replaces the checkpoint's ", stored)
                                           : absl::StrCat("keeping the checkpoint's --", name, "=", stored, " (give --",
                                                          name, " to change it)");
            std::fprintf(stderr, "%s\n", said.c_str());
          }
        }
      }
    }
    if (eval_only) {
      if (!from) return absl::FailedPreconditionError("--eval_only: there is no checkpoint to evaluate");
      EMBER_RETURN_IF_ERROR(evaluator.Run(val_batches));
      auto& m = evaluator.state().metrics;
      if (rank == 0) {
        std::printf("%s\n", MetricsLog::Format({{"checkpoint", *from},
                                                {"epoch", trainer.state().epoch},
                                                {"iteration", trainer.state().iteration},
                                                {"val_loss", m["val_loss"]},
                                                {"val_accuracy", m["val_accuracy"]},
                                                {"val_samples", static_cast<int64_t>(m["val_samples"])},
                                                {"world_size", world_size}})
                                 .c_str());
      }
      final_epoch = trainer.state().epoch;
      final_iteration = trainer.state().iteration;
      outcome = {"evaluated", 0};
      return absl::OkStatus();
    }
    evaluator.On(Events::Completed(), *es);
    evaluator.On(Events::Completed(), *ckpt);
    if (from && trainer.state().epoch == absl::GetFlag(FLAGS_epochs) &&
        trainer.state().iteration == trainer.state().epoch * trainer.state().epoch_length.value_or(0)) {
      // A finished run: say so and touch nothing (rerunning a finished job must not retrain).
      if (rank == 0) {
        std::fprintf(stderr, "train: %s already finished epoch %lld of --epochs=%d: nothing to do\n", from->c_str(),
                     static_cast<long long>(trainer.state().epoch), absl::GetFlag(FLAGS_epochs));
      }
      final_epoch = trainer.state().epoch;
      final_iteration = trainer.state().iteration;
      outcome = {"completed", 0};
      return absl::OkStatus();
    }
    if (from && trainer.state().epoch > absl::GetFlag(FLAGS_epochs)) {
      return absl::InvalidArgumentError(absl::StrCat("--epochs=", absl::GetFlag(FLAGS_epochs), " but ", *from,
                                                     " is already at epoch ", trainer.state().epoch,
                                                     "; give --epochs greater than that to train further"));
    }
    if (rank == 0) {
      // The log reads as one run: lines past the checkpoint resumed from (a future that was
      // abandoned) and a torn last line are dropped.
      EMBER_ASSIGN_OR_RETURN(metrics_log, MetricsLog::Open(JoinPath(out_dir, "metrics.jsonl")));
      const int64_t resume_point = from ? trainer.state().iteration : 0;
      EMBER_ASSIGN_OR_RETURN(int dropped, metrics_log->ResumeAt(resume_point));
      if (dropped > 0) {
        std::fprintf(stderr, "train: %s: dropped %d line(s) after iteration %lld, the point this run resumes from\n",
                     metrics_log->path().c_str(), dropped, static_cast<long long>(resume_point));
      }
    }
    // The sample ledger: lines past the resume point (a killed run's, trained again now) are
    // dropped by rank 0 before any rank writes again.
    std::unique_ptr<LedgerWriter> ledger;
    if (absl::GetFlag(FLAGS_ledger)) {
      const int64_t start = trainer.state().iteration;
      EMBER_RETURN_IF_ERROR(dist::RunOnRoot(comm, 0, absl::Now() + deadline, [&]() -> absl::Status {
        EMBER_ASSIGN_OR_RETURN(int dropped, TrimLedger(out_dir, start));
        if (dropped > 0) std::fprintf(stderr, "train: ledger: dropped %d line(s) after iteration %lld\n", dropped, static_cast<long long>(start));
        return absl::OkStatus();
      }));
      EMBER_ASSIGN_OR_RETURN(ledger, LedgerWriter::Open(out_dir, {.dataset_size = data.train.size(),
                                                                  .global_batch = global_batch,
                                                                  .epoch_length = *train_source.size(),
                                                                  .world_size = world_size,
                                                                  .rank = rank,
                                                                  .from_iteration = start}));
      train_source.set_on_batch([&](int64_t, const torch::Tensor& ids) { ledger_ids = ids; });
      trainer.On(Events::IterationCompleted(), [&](Engine& e) -> absl::Status {
        return ledger->Append(e.state().epoch, e.state().iteration, ledger_ids);
      });
    }
    absl::Status run = trainer.Run(train_source, {.max_epochs = absl::GetFlag(FLAGS_epochs)});
    final_epoch = trainer.state().epoch;
    final_iteration = trainer.state().iteration;
    if (!run.ok()) return run;
    // Why the run ended, from the engine (the handlers terminate it by name).
    const std::string& by = trainer.outcome().terminated_by;
    if (by == Preemption::kName) {
      // Save where we are, every rank agreeing, durably before exiting.
      const absl::Time save_start = absl::Now();
      EMBER_RETURN_IF_ERROR(trainer.Synchronize(*preempt_ckpt));
      EMBER_RETURN_IF_ERROR(preempt_ckpt->Flush());
      const absl::Time durable = absl::Now();
      // The bound for this event: the window between the two checks the signal fell in (one
      // step, plus an epoch's evaluation when it crossed one) plus the save.
      if (std::optional<absl::Time> signalled = Preemption::signal_time(); signalled && !preemption.stop_window()) {
        std::fprintf(stderr,
                     "train: rank %d: preempted at iteration %lld; %s durable %.0f ms after the signal (signalled "
                     "before training began, save %.0f ms)\n",
                     rank, static_cast<long long>(trainer.state().iteration),
                     preempt_ckpt->latest_checkpoint().value_or("checkpoint").c_str(),
                     absl::ToDoubleMilliseconds(durable - *signalled), absl::ToDoubleMilliseconds(durable - save_start));
      } else if (signalled) {
        std::fprintf(stderr,
                     "train: rank %d: preempted at iteration %lld; %s durable %.0f ms after the signal (step window "
                     "%.0f ms, save %.0f ms)\n",
                     rank, static_cast<long long>(trainer.state().iteration),
                     preempt_ckpt->latest_checkpoint().value_or("checkpoint").c_str(),
                     absl::ToDoubleMilliseconds(durable - *signalled),
                     absl::ToDoubleMilliseconds(preemption.stop_window().value_or(absl::ZeroDuration())),
                     absl::ToDoubleMilliseconds(durable - save_start));
      }
      outcome = {"preempted", 0};
    } else if (by == TerminateOnNan::kName) {
      outcome = {"terminate_on_nan", 3};
    } else if (by == EarlyStopping::kName) {
      outcome = {"early_stopping", 0};
    } else {
      outcome = {"completed", 0};
    }
    // An asynchronous epoch checkpoint still being written is durable (and recorded) before the
    // final line names it, whatever ended the run (after a preemption's own save, so that the
    // preemption's bound does not include it).
    return ckpt->Flush();
  }();
  if (!status.ok()) fail(status);

  PrintFinalLine(rank, world_size, final_epoch, final_iteration, outcome.stopped_by, best, latest, best_score);
  std::fflush(stderr);
  // Meet before exiting: mpirun ends the whole job at the first non-zero exit, so every rank's
  // final line must be out first. After a failed collective there is no meeting: exit now.
  if ((*world)->Shutdown().ok() && outcome.exit_code == 0) return 0;
  std::fflush(nullptr);
  ::_exit(outcome.exit_code);
}

}  // namespace
}  // namespace ember::tools

int main(int argc, char** argv) { return ember::tools::Main(argc, argv); }
