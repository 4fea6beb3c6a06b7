// train: Ember's distributed trainer. Data-parallel SGD of an MLP classifier: every rank trains on
// its shard, gradients are all-reduced every step (bucketed: one collective per bucket), each epoch
// ends with an evaluation on the held-out split whose metrics are all-reduced; ModelCheckpoint,
// EarlyStopping, TerminateOnNan, a Timer, progress on rank 0 and a JSON-lines metrics log.
//
//   bazel run --run_under="mpirun -np 4 --oversubscribe" //tools:train -- --epochs=3
//   bazel run //tools:train -- --data=synthetic --epochs=5          (one process)
//
// The program is the library put together; its pieces live beside it: the flags and their
// validation (train_flags.h), the final line and the exit codes (run_report.h), the data
// (data.h), the models (models.h), the output directory and the run's settings (run_dir.h), the
// sample ledger (ledger.h). Each rank prints one final JSON line (run_report.h).
#include <torch/torch.h>

#include <climits>
#include <csignal>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/crc32.h"
#include "base/directory_lock.h"
#include "base/file_system.h"
#include "base/status_macros.h"
#include "distributed/launch.h"
#include "distributed/launcher_env.h"
#include "distributed/root_action.h"
#include "distributed/settings_agreement.h"
#include "engine/engine.h"
#include "handlers/checkpoint/global_step.h"
#include "handlers/checkpoint/model_checkpoint.h"
#include "handlers/early_stopping.h"
#include "handlers/ema_handler.h"
#include "handlers/metrics.h"
#include "handlers/metrics_log.h"
#include "handlers/param_scheduler.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/parallel/grad_scaler.h"
#include "handlers/parallel/sharded_source.h"
#include "handlers/preemption.h"
#include "handlers/parallel/supervised_step.h"
#include "handlers/progress.h"
#include "handlers/terminate_on_nan.h"
#include "handlers/time_limit.h"
#include "handlers/timer.h"
#include "nlohmann/json.hpp"
#include "tools/data.h"
#include "tools/ledger.h"
#include "tools/lr_schedule.h"
#include "tools/models.h"
#include "tools/run_dir.h"
#include "tools/run_report.h"
#include "tools/train_flags.h"

namespace ember::tools {
namespace {

// Whether two directory paths name the same directory: their real paths when both exist (a
// symlink or "a/../b" spelling is the same directory), else their lexical forms.
bool SameDirectory(const std::string& a, const std::string& b) {
  char ra[PATH_MAX], rb[PATH_MAX];
  if (::realpath(a.c_str(), ra) != nullptr && ::realpath(b.c_str(), rb) != nullptr) return std::string(ra) == rb;
  return std::filesystem::path(a).lexically_normal() == std::filesystem::path(b).lexically_normal();
}

// A checkpoint's schedule position means something only in the schedule it was taken in: a
// resume with a schedule needs the checkpoint's own (a checkpoint trained at a constant lr has no
// position to continue from). Resuming a scheduled checkpoint without a schedule keeps its last
// lr, and says so.
absl::Status CheckLrSchedule(const Value& loaded, const std::string& file, bool scheduled, const std::string& mine,
                             int rank) {
  const Value* record = loaded.Find("lr_schedule");
  const Value* saved = record != nullptr && record->is_dict() ? record->Find("flags") : nullptr;
  const std::string theirs =
      saved != nullptr && saved->is_string() ? saved->as_string()
      : loaded.Find("lr_scheduler") != nullptr ? "a schedule this trainer did not record"
                                              : "a constant lr (no --lr_schedule)";
  if (scheduled && theirs != mine) {
    return absl::FailedPreconditionError(
        absl::StrCat(file, " was trained with ", theirs, ", this run asks for ", mine,
                     ": a schedule continues only from a checkpoint of the same schedule (give the same flags, "
                     "or leave them out to go on at the checkpoint's last lr, or start a new run)"));
  }
  if (!scheduled && loaded.Find("lr_scheduler") != nullptr && rank == 0) {
    std::fprintf(stderr, "train: %s was trained with %s; without it this run goes on at a constant lr\n",
                 file.c_str(), theirs.c_str());
  }
  return absl::OkStatus();
}

// The run, from the validated flags to the end of training (or of the evaluation with
// --eval_only). Fills `report` as it goes: whatever ends the run, an error included, it names the
// checkpoints on disk. Rank 0 keeps --output_dir locked in `dir_lock`.
absl::Status Train(const TrainFlags& flags, dist::Communicator& comm, Preemption& preemption, RunReport& report,
                   std::unique_ptr<DirectoryLock>* dir_lock) {
  const int rank = comm.rank();
  const int world_size = comm.world_size();
  torch::set_num_threads(flags.threads);
  const uint64_t seed = static_cast<uint64_t>(flags.seed);
  const int batch_size = flags.batch_size;
  const int64_t global_batch = flags.global_batch;
  const absl::Duration deadline = flags.deadline;
  const RankIteration nan_at = flags.inject_nan, preempt_at = flags.inject_preempt;
  // Which attempt of torchrun's elastic agent this is (LaunchWorld has read it without error).
  const dist::LaunchInfo launch = dist::ReadLaunchInfo().value_or(dist::LaunchInfo{});
  // --time_limit: its clock starts now (the budget covers the start-up); it stops the run, agreed
  // by every rank, when the next step and the final checkpoint would no longer fit (safety mode,
  // with the measured step and save times), and the run saves as a preemption does.
  std::unique_ptr<Checkpoint> ckpt, preempt_ckpt;
  std::unique_ptr<TimeLimit> time_limit;
  if (!flags.time_limit.empty()) {
    TimeLimitOptions o{.safety = true,
                       .final_save_reserve_sec = 1.0,
                       .save_time = [&] {
                         return (ckpt ? ckpt->blocked_time() : absl::ZeroDuration()) +
                                (preempt_ckpt ? preempt_ckpt->blocked_time() : absl::ZeroDuration());
                       }};
    if (flags.time_limit == "slurm") {
      o.budget = TimeLimitOptions::Budget::kSlurmJobEnd;
    } else if (!absl::SimpleAtoi(flags.time_limit, &o.limit_sec)) {
      return absl::InvalidArgumentError(absl::StrCat("--time_limit='", flags.time_limit, "'"));  // validated before
    }
    absl::StatusOr<std::unique_ptr<TimeLimit>> made = TimeLimit::Create(std::move(o));
    if (!made.ok()) return absl::Status(made.status().code(), absl::StrCat("--time_limit=", flags.time_limit, ": ", made.status().message()));
    time_limit = *std::move(made);
  }
  EMBER_ASSIGN_OR_RETURN(Dataset data, LoadDataset(flags.data, seed));
  // The data itself, not only --data's text: ranks that read another file under the same path (a
  // stale copy on one node) would train their replicas on other samples under one global order.
  // One CRC-32 of each split's samples and labels, compared across ranks like the flags, before
  // any check of the data's size: a rank with a smaller stale copy gets the same error as its
  // peers, naming the difference, not an error of its own about too few samples.
  if (world_size > 1) {
    dist::SettingList content;
    for (const auto& [name, split] : {std::pair<const char*, const Split*>{"train split", &data.train},
                                      std::pair<const char*, const Split*>{"validation split", &data.val}}) {
      const torch::Tensor x = split->x.contiguous().cpu();
      const torch::Tensor y = split->y.contiguous().cpu();
      uint32_t crc = Crc32(0, x.data_ptr(), static_cast<size_t>(x.numel()) * x.element_size());
      crc = Crc32(crc, y.data_ptr(), static_cast<size_t>(y.numel()) * y.element_size());
      content.Add(name, absl::StrCat(split->size(), " samples of ", x.dim() > 1 ? x.size(1) : 1, " features, crc32 ",
                                     absl::Hex(crc, absl::kZeroPad8)));
    }
    EMBER_RETURN_IF_ERROR(dist::AgreeOnSettings(comm, absl::StrCat("training data (--data=", flags.data, ")"),
                                                content, deadline));
  }
  if (data.train.size() < global_batch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", data.train.size(), " training samples of ", data.name, " cannot be sharded over ", world_size,
        " ranks with --batch_size=", batch_size, " (each rank needs at least one full batch)"));
  }
  if (data.val.size() < world_size) {
    return absl::InvalidArgumentError(absl::StrCat("the validation split has ", data.val.size(),
                                                   " samples, fewer than the ", world_size, " ranks"));
  }
  torch::Device device = flags.device == "cuda"
                             ? torch::Device(torch::kCUDA, comm.local_rank())  // Launch checked one GPU per local rank
                             : torch::Device(torch::kCPU);

  // The model; the same initial weights on every rank (and DataParallel broadcasts rank 0's).
  torch::manual_seed(seed);
  EMBER_ASSIGN_OR_RETURN(torch::nn::Sequential model,
                         BuildModel(flags.model, data.train.x.size(1), flags.hidden, data.num_classes));
  model->to(device);
  torch::optim::SGD optimizer(model->parameters(),
                              torch::optim::SGDOptions(flags.lr).momentum(flags.momentum));
  // Parameters broadcast from rank 0; gradients averaged in buckets (one collective each),
  // overlapping backward unless several backward passes precede one reduce (--accumulate); at
  // world size 1 only with --reduce_alone (the side-by-side with PyTorch DDP).
  DataParallel ddp(*model, {.bucket_bytes = flags.bucket_bytes,
                            .deadline = deadline,
                            .overlap = flags.accumulate == 1,
                            .reduce_alone = flags.reduce_alone});
  EMBER_RETURN_IF_ERROR(ddp.status());

  // The step: ignite's supervised update (SupervisedStep) with --accumulate micro-batches per
  // optimizer step, --clip_grad_norm on the averaged gradients and --precision's autocast. The
  // iteration's agreement (TerminateOnNan, Preemption, TimeLimit) rides in the last gradient
  // bucket of each step that reduces; the testing aids act in the output, before it is carried.
  int64_t iteration_now = 0;
  // --precision: bfloat16 autocast on either device; float16 (CUDA only) with torch's dynamic loss
  // scaling, whose state ("grad_scaler", Python's GradScaler layout) every checkpoint keeps.
  std::optional<torch::ScalarType> autocast_dtype;
  if (flags.precision == "bfloat16") autocast_dtype = torch::kBFloat16;
  if (flags.precision == "float16") autocast_dtype = torch::kFloat16;
  std::unique_ptr<GradScaler> grad_scaler;
  if (flags.precision == "float16") {
    EMBER_ASSIGN_OR_RETURN(grad_scaler, GradScaler::Create({}));
  }
  EMBER_ASSIGN_OR_RETURN(
      std::unique_ptr<SupervisedStep> step,
      SupervisedStep::Create(
          [&](const torch::Tensor& x) { return model->forward(x); }, optimizer,
          [](const torch::Tensor& p, const torch::Tensor& y) { return torch::nn::functional::cross_entropy(p, y); },
          {.accumulation_steps = flags.accumulate,
           .clip_grad_norm = flags.clip_grad_norm > 0 ? std::optional<double>(flags.clip_grad_norm) : std::nullopt,
           .data_parallel = &ddp,
           .output_transform = [&](const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                   const torch::Tensor& loss) {
             double output = loss.item<double>();
             if (rank == nan_at.rank && iteration_now == nan_at.iteration) output = std::nan("");
             if (rank == preempt_at.rank && iteration_now == preempt_at.iteration) ::raise(SIGTERM);
             return output;
           },
           .autocast_cpu_dtype = device.is_cuda() ? std::nullopt : autocast_dtype,
           .autocast_cuda_dtype = device.is_cuda() ? autocast_dtype : std::nullopt,
           .grad_scaler = grad_scaler.get(),
           .deadline = deadline}));
  const absl::Duration step_delay = flags.step_delay;
  int64_t epoch_samples = 0;  // this rank's, this epoch (a partial last batch counts its real size)
  Engine trainer([&](Engine& e, const Batch& b) -> absl::StatusOr<double> {
    epoch_samples += b.y.size(0);
    iteration_now = e.state().iteration;
    EMBER_ASSIGN_OR_RETURN(double output, (*step)(e, b.x.to(device), b.y.to(device)));
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
  // --lr_schedule: sets every group's lr before each step (none for a constant lr).
  const int64_t run_iterations = int64_t{flags.epochs} * train_source.size().value_or(0);
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<ParamScheduler> lr_scheduler,
                         BuildLrScheduler(flags.lr_schedule, optimizer, flags.lr, run_iterations));
  if (lr_scheduler != nullptr) trainer.On(Events::IterationStarted(), *lr_scheduler);
  torch::Tensor ledger_ids;  // this rank's ids of the current batch (--ledger)

  // Evaluation on this rank's shard of the held-out split; the sums are all-reduced. The shards
  // cover every sample exactly once whatever the world size (their sizes differ by at most one).
  // Every rank cuts its shard into the same number of batches (of at most 512 samples, sizes
  // differing by at most one), so that the evaluator's epochs have the same length on every rank,
  // as its start agreement requires: shards of 512 and 513 samples are one batch against two
  // when cut every 512.
  const int64_t val_begin = data.val.size() * rank / world_size;
  const int64_t val_end = data.val.size() * (rank + 1) / world_size;
  const int64_t largest_shard = (data.val.size() + world_size - 1) / world_size;
  const int64_t val_batch_count = (largest_shard + 511) / 512;
  std::vector<Batch> val_batches;
  for (int64_t b = 0; b < val_batch_count; ++b) {
    const int64_t at = val_begin + (val_end - val_begin) * b / val_batch_count;
    const int64_t end = val_begin + (val_end - val_begin) * (b + 1) / val_batch_count;
    val_batches.push_back({data.val.x.slice(0, at, end), data.val.y.slice(0, at, end)});
  }
  // --ema: an exponential moving average of the weights (EMAHandler), created after DataParallel's
  // broadcast so that it is the same on every rank, updated after every iteration; the evaluation
  // (and so the checkpoints' score and EarlyStopping) is the EMA's.
  std::unique_ptr<EMAHandler> ema;
  std::shared_ptr<torch::nn::SequentialImpl> ema_model;
  if (flags.ema > 0) {
    EMBER_ASSIGN_OR_RETURN(ema, EMAHandler::Create(model, {.momentum = flags.ema}));
    ema_model = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(ema->ema_model_ptr());
    if (ema_model == nullptr) return absl::InternalError("--ema: the EMA model is not a Sequential");
    EMBER_RETURN_IF_ERROR(ema->Attach(trainer));
  }
  Engine evaluator([&](Engine&, const Batch& b) {
    torch::NoGradGuard no_grad;
    torch::Tensor x = b.x.to(device);
    return Prediction{ema_model != nullptr ? ema_model->forward(x) : model->forward(x), b.y.to(device)};
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
  if (time_limit != nullptr) trainer.On(Events::IterationCompleted(), *time_limit);
  Timer timer(/*average=*/true);
  EMBER_RETURN_IF_ERROR(timer.Attach(trainer, {.start = Events::EpochStarted(), .pause = Events::IterationCompleted(),
                                               .resume = Events::IterationStarted(), .step = Events::IterationCompleted()}));
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<EarlyStopping> es,
                         EarlyStopping::Create({.patience = flags.patience, .score_name = "val_accuracy"}, trainer));
  const std::string& out_dir = flags.output_dir;
  const std::string& resume_from = flags.resume_from;
  const bool resuming = flags.resuming();
  const bool eval_only = flags.eval_only;
  if (!eval_only) {
    absl::Status taken = TakeOutputDir(comm, out_dir, resuming, absl::Now() + deadline, dir_lock);
    if (taken.code() == absl::StatusCode::kFailedPrecondition && launch.restart_count > 0) {
      // torchrun's elastic agent restarts workers with the flags of the first attempt.
      return absl::FailedPreconditionError(absl::StrCat(
          taken.message(), " (torchrun's elastic agent restarted this trainer, TORCHELASTIC_RESTART_COUNT=",
          launch.restart_count, ", with the flags of its first attempt: launch with --resume, which starts "
          "fresh when nothing is there, so that a restart continues the run)"));
    }
    EMBER_RETURN_IF_ERROR(taken);
  }
  RunSettings settings(global_batch, batch_size, world_size, flags.model, flags.hidden, flags.patience);
  // The epoch in progress so far (its loss, samples and seconds), for the metrics line of an epoch
  // a preemption cut: `carried` is what the run resumed from had done of it.
  EpochTally carried;
  std::function<EpochTally()> epoch_now;  // set below, once its pieces exist
  EpochSoFar epoch_so_far([&] { return epoch_now ? epoch_now() : EpochTally{}; });
  // What every checkpoint of the run holds, epoch-end and preemption alike.
  ObjectMap to_save = {{"model", *model},     {"optimizer", optimizer}, {"trainer", trainer},
                       {"early_stopping", *es}, {"data", train_source},   {"run", settings},
                       {"epoch_so_far", epoch_so_far}};
  // The schedule's position, and which schedule it is a position in (checked on resume).
  const std::string schedule_flags = flags.lr_schedule.Describe(run_iterations);
  if (ema != nullptr) {
    to_save.emplace_back("ema_model", *ema_model);
    to_save.emplace_back("ema_handler", *ema);
  }
  if (grad_scaler != nullptr) to_save.emplace_back("grad_scaler", *grad_scaler);
  if (lr_scheduler != nullptr) {
    to_save.emplace_back("lr_scheduler", *lr_scheduler);
    to_save.emplace_back("lr_schedule", Saveable([&]() -> absl::StatusOr<Value> {
                                          Value v = Value::Dict();
                                          v.Set("flags", schedule_flags);
                                          return v;
                                        },
                                        [](const Value&, bool) { return absl::OkStatus(); }));
  }
  // --eval_only writes nothing: its checkpointers only read (a corrupt file is skipped, not moved
  // aside; a live run's temporary files stay), and with --resume_from it needs none.
  ReadOnlyFileSystem read_only(FileSystem::Default());
  FileSystem* fs = eval_only ? &read_only : FileSystem::Default();
  if (!eval_only || resume_from.empty()) {
    EMBER_ASSIGN_OR_RETURN(
        ckpt, ModelCheckpoint::Create(
                  {.disk = {.dirname = out_dir, .create_dir = !eval_only, .require_empty = !resuming, .fs = fs},
                   .checkpoint = {.score_name = "val_accuracy", .n_saved = flags.n_saved, .keep_last = 1,
                                  .global_step_transform = GlobalStepFromEngine(trainer),
                                  .async_save = flags.async_save, .snapshot_in_background = flags.async_save}},
                  to_save));
    // A preemption stops the run mid-epoch: its state goes to a checkpointer of its own (the
    // newest only, named by the iteration), so that neither the best-score ranking nor
    // EarlyStopping sees an evaluation the uninterrupted run would not have made.
    EMBER_ASSIGN_OR_RETURN(
        preempt_ckpt,
        ModelCheckpoint::Create({.disk = {.dirname = out_dir, .create_dir = !eval_only, .require_empty = false, .fs = fs},
                                 .checkpoint = {.filename_prefix = "preempted", .n_saved = 1}},
                                to_save));
  }
  // Whatever ends the run (an error included), the final line reports the checkpoints on disk:
  // the best and latest epoch-end ones, or the preemption's when this run saved one last.
  bool preempt_saved = false;
  struct ReportCheckpoints {
    Checkpoint* ckpt;
    Checkpoint* preempt_ckpt;
    const bool& preempt_saved;
    RunReport& report;
    ~ReportCheckpoints() {
      if (ckpt == nullptr) return;
      report.best_checkpoint = ckpt->last_checkpoint();
      report.latest_checkpoint = ckpt->latest_checkpoint();
      report.best_score = ckpt->best_score();
      if (preempt_saved && preempt_ckpt->latest_checkpoint()) report.latest_checkpoint = preempt_ckpt->latest_checkpoint();
    }
  } report_checkpoints{ckpt.get(), preempt_ckpt.get(), preempt_saved, report};
  // Training throughput is measured up to here, before the evaluation.
  double epoch_seconds = 0;
  absl::Time epoch_start = absl::Now();
  trainer.On(Events::EpochStarted(), [&] { epoch_start = absl::Now(); });
  trainer.On(Events::EpochCompleted(), [&] { epoch_seconds = absl::ToDoubleSeconds(absl::Now() - epoch_start); });
  trainer.On(Events::EpochCompleted(), [&]() -> absl::Status { return evaluator.Run(val_batches); });

  // Rank 0: progress and the metrics log.
  Progress progress({.mode = flags.progress});
  EMBER_RETURN_IF_ERROR(progress.Attach(trainer));
  trainer.On(Events::EpochStarted(), [&] { epoch_samples = 0; });
  // Goodput: where each epoch's wall time went (training, evaluation and the checkpoint
  // included), from the checkpointer's and the communicator's counters.
  struct Spent {
    absl::Time at;
    absl::Duration blocked, background, collectives;
    int64_t buckets = 0;
  };
  auto spent_now = [&] {
    if (ckpt == nullptr) return Spent{absl::Now(), {}, {}, comm.collective_time(), ddp.buckets_reduced()};  // --eval_only
    return Spent{absl::Now(), ckpt->blocked_time(), ckpt->background_write_time(), comm.collective_time(),
                 ddp.buckets_reduced()};
  };
  Spent epoch_began = spent_now();
  trainer.On(Events::EpochStarted(), [&] { epoch_began = spent_now(); });
  epoch_now = [&] {
    // At an epoch's end nothing is carried (a resume from there starts a new epoch): zeros, so
    // that epoch-end checkpoints stay bitwise equal between a run and its resumed twin.
    const int64_t length = trainer.state().epoch_length.value_or(0);
    if (length <= 0 || trainer.state().iteration % length == 0) return EpochTally{};
    EpochTally t = carried;
    t += EpochTally{.output_sum = progress.epoch_output_sum(),
                    .steps = progress.epoch_steps(),
                    .samples = epoch_samples * world_size,  // every rank's shard has the same size
                    .train_s = absl::ToDoubleSeconds(absl::Now() - epoch_start),
                    .epoch_s = absl::ToDoubleSeconds(absl::Now() - epoch_began.at)};
    return t;
  };
  std::unique_ptr<MetricsLog> metrics_log;  // rank 0
  trainer.On(Events::EpochCompleted(), [&](Engine& e) {
    if (rank != 0) return;
    auto& m = e.state().metrics;
    // The whole epoch, the part before a mid-epoch resume included (`carried`).
    const int64_t steps = carried.steps + progress.epoch_steps();
    const int64_t samples = carried.samples + epoch_samples * world_size;
    const double train_s = carried.train_s + epoch_seconds;
    nlohmann::ordered_json line = {
        {"epoch", e.state().epoch},
        {"iteration", e.state().iteration},
        {"train_loss", steps > 0 ? (carried.output_sum + progress.epoch_output_sum()) / steps : 0.0},
        {"val_loss", m["val_loss"]},
        {"val_accuracy", m["val_accuracy"]},
        {"val_samples", static_cast<int64_t>(m["val_samples"])},
        {"train_samples", samples},
        {"samples_per_s", static_cast<double>(samples) / train_s},
        {"world_size", world_size},
        {"time_per_iteration_s", timer.value()},
        {"lr", static_cast<torch::optim::SGDOptions&>(optimizer.param_groups()[0].options()).lr()}};
    const Spent now = spent_now();
    const double epoch_s = carried.epoch_s + absl::ToDoubleSeconds(now.at - epoch_began.at);
    const double blocked_s = absl::ToDoubleSeconds(now.blocked - epoch_began.blocked);
    line["epoch_s"] = epoch_s;
    line["checkpoint_blocked_s"] = blocked_s;
    line["checkpoint_blocked_share"] = epoch_s > 0 ? blocked_s / epoch_s : 0.0;
    line["checkpoint_background_s"] = absl::ToDoubleSeconds(now.background - epoch_began.background);
    line["collectives_s"] = absl::ToDoubleSeconds(now.collectives - epoch_began.collectives);
    line["gradient_buckets_reduced"] = now.buckets - epoch_began.buckets;
    if (absl::Status s = metrics_log->Append(line); !s.ok()) {
      std::fprintf(stderr, "train: warning: %s\n", std::string(s.message()).c_str());
    }
    progress.Line(MetricsLog::Format(line));
  });
  trainer.On(Events::EpochCompleted(), [&] { carried = EpochTally{}; });  // every rank, after the line

  std::optional<std::string> from;
  std::optional<int64_t> stored_patience;  // the --patience the checkpoint resumed from was trained with
  if (resuming) {
    Value loaded;
    // The settings record is checked, not loaded (a checkpoint written in Python has none).
    ObjectMap to_load = {
        {"model", *model}, {"optimizer", optimizer}, {"trainer", trainer}, {"early_stopping", *es}};
    if (lr_scheduler != nullptr) to_load.emplace_back("lr_scheduler", *lr_scheduler);
    const ObjectMap nothing;
    if (!resume_from.empty()) {
      EMBER_ASSIGN_OR_RETURN(loaded, ReadOnRootAndShare(comm, resume_from, absl::Now() + deadline));
      from = resume_from;
      // The run's own checkpoints in --output_dir are known from the start (the final line names
      // them even when the run stops before its first epoch end).
      if (!eval_only) EMBER_RETURN_IF_ERROR(ckpt->ResumeLatest(comm, &nothing, /*start_over_if_unusable=*/true).status());
    } else {
      // The newest usable checkpoint of the two checkpointers (nothing loaded yet). Epoch-end
      // files that are all unusable do not hide a usable preemption file: the choice is the same
      // with or without --start_over, and whatever earlier attempts moved aside.
      absl::StatusOr<std::optional<std::string>> resumed =
          ckpt->ResumeLatest(comm, &nothing, flags.start_over, &loaded);
      absl::Status unusable;
      if (!resumed.ok()) {
        if (resumed.status().code() != absl::StatusCode::kFailedPrecondition) return resumed.status();
        unusable = resumed.status();
      } else {
        from = *resumed;
      }
      const Value* its_trainer = from ? loaded.Find("trainer") : nullptr;
      const Value* its_iteration = its_trainer != nullptr ? its_trainer->Find("iteration") : nullptr;
      const int64_t from_iteration = its_iteration != nullptr && its_iteration->is_int() ? its_iteration->as_int() : -1;
      // A preemption's checkpoint newer than the newest epoch-end one takes over.
      Value preempted;
      EMBER_ASSIGN_OR_RETURN(std::optional<std::string> at,
                             preempt_ckpt->ResumeLatest(comm, &nothing, /*start_over_if_unusable=*/true, &preempted));
      its_trainer = at ? preempted.Find("trainer") : nullptr;
      its_iteration = its_trainer != nullptr ? its_trainer->Find("iteration") : nullptr;
      if (its_iteration != nullptr && its_iteration->is_int() && (!from || its_iteration->as_int() > from_iteration)) {
        loaded = std::move(preempted);
        from = at;
      }
      if (!from && !unusable.ok()) {
        return absl::Status(unusable.code(),
                            absl::StrCat(unusable.message(),
                                         " (--start_over trains from scratch, keeping those files; "
                                         "--resume_from=PATH continues from one file you choose)"));
      }
      if (from && !unusable.ok() && rank == 0) {
        std::fprintf(stderr, "train: the epoch-end checkpoints are unusable (%s); the preemption checkpoint is not\n",
                     std::string(unusable.message()).c_str());
      }
    }
    // What the checkpoint was trained with is checked before its tensors are loaded, so that
    // another model is named as such (not as a tensor of another shape).
    if (from) {
      EMBER_RETURN_IF_ERROR(settings.CheckModel(loaded.Find("run"), *from));
      EMBER_RETURN_IF_ERROR(CheckLrSchedule(loaded, *from, lr_scheduler != nullptr, schedule_flags, rank));
      // The EMA, when the checkpoint has one (a checkpoint trained without --ema: below).
      ObjectMap load_now = to_load;
      if (ema != nullptr && loaded.Find("ema_model") != nullptr) {
        load_now.emplace_back("ema_model", *ema_model);
        if (loaded.Find("ema_handler") != nullptr) load_now.emplace_back("ema_handler", *ema);
      }
      // --precision may change on resume (the weights are float32 either way); float16's loss
      // scale continues when the checkpoint has one and starts afresh (as torch's) when not.
      if (grad_scaler != nullptr && loaded.Find("grad_scaler") != nullptr) {
        load_now.emplace_back("grad_scaler", *grad_scaler);
      } else if (grad_scaler != nullptr && rank == 0) {
        std::fprintf(stderr, "train: %s has no loss scale (trained without --precision=float16): the scale starts at %g\n",
                     from->c_str(), grad_scaler->scale());
      } else if (grad_scaler == nullptr && loaded.Find("grad_scaler") != nullptr && rank == 0) {
        std::fprintf(stderr, "train: %s was trained with --precision=float16; its loss scale is not used at --precision=%s\n",
                     from->c_str(), flags.precision.c_str());
      }
      EMBER_RETURN_IF_ERROR(Checkpoint::LoadObjects(load_now, loaded));
      if (ema != nullptr && loaded.Find("ema_model") == nullptr) {
        // A checkpoint trained without --ema: the average starts from its weights.
        torch::NoGradGuard no_grad;
        auto from_params = model->parameters(), to_params = ema_model->parameters();
        for (size_t i = 0; i < from_params.size(); ++i) to_params[i].copy_(from_params[i]);
        auto from_buffers = model->buffers(), to_buffers = ema_model->buffers();
        for (size_t i = 0; i < from_buffers.size(); ++i) to_buffers[i].copy_(from_buffers[i]);
        if (rank == 0) {
          std::fprintf(stderr, "train: %s has no EMA (trained without --ema): the average starts from its weights\n",
                       from->c_str());
        }
      }
      stored_patience = RunSettings::Patience(loaded.Find("run"));
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
      // A mid-epoch checkpoint: the epoch's metrics line will cover its first part too.
      if (const int64_t length = trainer.state().epoch_length.value_or(0);
          length > 0 && trainer.state().iteration % length != 0) {
        const Value* record = loaded.Find("epoch_so_far");
        absl::StatusOr<EpochTally> so_far = EpochTally::FromValue(record);
        absl::Status consistent =
            so_far.ok() && record != nullptr ? so_far->CheckAgainst(trainer.state().iteration, length, global_batch)
                                             : so_far.status();
        if (!consistent.ok()) return absl::Status(consistent.code(), absl::StrCat(*from, ": ", consistent.message()));
        carried = *so_far;
        if (record == nullptr && rank == 0) {
          std::fprintf(stderr,
                       "train: %s has no \"epoch_so_far\" record (written in Python or by an older Ember): epoch "
                       "%lld's metrics line will cover only the iterations after this resume\n",
                       from->c_str(), static_cast<long long>(trainer.state().epoch));
        }
      }
      // The learning rate and momentum: a value given on the command line replaces the
      // checkpoint's; otherwise the checkpoint's stays.
      auto sgd = [&](size_t group) -> torch::optim::SGDOptions& {
        return static_cast<torch::optim::SGDOptions&>(optimizer.param_groups()[group].options());
      };
      for (const auto& [name, flag] : {std::pair<const char*, double>{"lr", flags.lr},
                                       std::pair<const char*, double>{"momentum", flags.momentum}}) {
        const bool is_lr = std::string_view(name) == "lr";
        if (is_lr && lr_scheduler != nullptr) {
          // The saved schedule continues and sets the lr; a --lr given now changes nothing: say so.
          if (flags.lr_given && rank == 0) {
            std::fprintf(stderr,
                         "train: --lr=%g is ignored: this run continues the checkpoint's schedule (%s), which sets "
                         "the lr (start a new run to change its peak)\n",
                         flag, schedule_flags.c_str());
          }
          continue;
        }
        const double stored = is_lr ? sgd(0).lr() : sgd(0).momentum();
        if (stored == flag) continue;
        const bool given = is_lr ? flags.lr_given : flags.momentum_given;
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
    report.epoch = trainer.state().epoch;
    report.iteration = trainer.state().iteration;
    report.stopped_by = "evaluated";
    report.exit_code = kExitOk;
    return absl::OkStatus();
  }
  evaluator.On(Events::Completed(), *es);
  evaluator.On(Events::Completed(), *ckpt);
  // First: a checkpoint past --epochs is refused whatever ended it (asking for fewer epochs than
  // were trained is a mistake to name, not a finished run).
  if (from && trainer.state().epoch > flags.epochs) {
    return absl::InvalidArgumentError(absl::StrCat("--epochs=", flags.epochs, " but ", *from,
                                                   " is already at epoch ", trainer.state().epoch,
                                                   "; give --epochs greater than that to train further"));
  }
  // EarlyStopping ended the run the checkpoint is from when its counter had reached that run's
  // --patience (a checkpoint that does not record it: this run's); a --patience raised now
  // continues it, and a smaller one never claims a stop that did not happen (EarlyStopping then
  // stops at the next evaluation without improvement).
  if (from && es->counter() >= stored_patience.value_or(flags.patience) && es->counter() < flags.patience &&
      trainer.state().iteration == trainer.state().epoch * trainer.state().epoch_length.value_or(0) && rank == 0) {
    // A stop that happened, undone by a larger --patience: said, since a requeue loop whose flags
    // changed between submissions would otherwise train on silently.
    std::fprintf(stderr,
                 "train: %s: EarlyStopping had stopped this run at epoch %lld (its counter %d reached --patience=%lld); "
                 "continuing it with --patience=%d\n",
                 from->c_str(), static_cast<long long>(trainer.state().epoch), es->counter(),
                 static_cast<long long>(stored_patience.value_or(flags.patience)), flags.patience);
  }
  if (from && es->counter() >= stored_patience.value_or(flags.patience) && es->counter() >= flags.patience &&
      trainer.state().iteration == trainer.state().epoch * trainer.state().epoch_length.value_or(0)) {
    // A run that EarlyStopping ended is finished too: its decision stands (rerunning must not
    // train one more epoch each time), the same outcome, nothing touched.
    if (rank == 0) {
      std::fprintf(stderr, "train: %s: already stopped by EarlyStopping at epoch %lld: nothing to do\n", from->c_str(),
                   static_cast<long long>(trainer.state().epoch));
    }
    report.epoch = trainer.state().epoch;
    report.iteration = trainer.state().iteration;
    report.SetOutcome(EarlyStopping::kName);
    return absl::OkStatus();
  }
  if (from && trainer.state().epoch == flags.epochs &&
      trainer.state().iteration == trainer.state().epoch * trainer.state().epoch_length.value_or(0)) {
    // A finished run: say so and touch nothing (rerunning a finished job must not retrain).
    if (rank == 0) {
      std::fprintf(stderr, "train: %s already finished epoch %lld of --epochs=%d: nothing to do\n", from->c_str(),
                   static_cast<long long>(trainer.state().epoch), flags.epochs);
    }
    report.epoch = trainer.state().epoch;
    report.iteration = trainer.state().iteration;
    report.SetOutcome("");
    return absl::OkStatus();
  }
  if (from) {
    // Resumed from an earlier point than the directory's newest files (--resume_from an older
    // checkpoint): the checkpoints of the future this run abandons are set aside (renamed
    // NAME.pt.abandoned, said on stderr, never deleted), so that they neither rank as the best,
    // nor evict this run's files, nor are resumed from, as the metrics log and the ledger drop
    // that future's lines. The epoch checkpoints are numbered by epoch, the preemption's by
    // iteration; an epoch-end file past the resume point is one of a later epoch.
    // A file from another directory continues another run's trajectory: every checkpoint already
    // here is of a run this one does not continue, whatever its step, and is set aside too.
    const bool elsewhere = !resume_from.empty() && !SameDirectory(DirName(resume_from), out_dir);
    const int64_t iteration = elsewhere ? -1 : trainer.state().iteration;
    const int64_t epoch_length = trainer.state().epoch_length.value_or(*train_source.size());
    EMBER_RETURN_IF_ERROR(
        ckpt->SetAsideAfter(comm, elsewhere ? -1 : epoch_length > 0 ? iteration / epoch_length : 0).status());
    EMBER_RETURN_IF_ERROR(preempt_ckpt->SetAsideAfter(comm, iteration).status());
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
  if (flags.ledger) {
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
  absl::Status run = trainer.Run(train_source, {.max_epochs = flags.epochs});
  report.epoch = trainer.state().epoch;
  report.iteration = trainer.state().iteration;
  if (!run.ok()) return run;
  // Why the run ended, from the engine (the handlers terminate it by name).
  const std::string& by = trainer.outcome().terminated_by;
  if (by == Preemption::kName || by == TimeLimit::kName) {
    // Save where we are, every rank agreeing, durably before exiting.
    const absl::Time save_start = absl::Now();
    EMBER_RETURN_IF_ERROR(trainer.Synchronize(*preempt_ckpt));
    EMBER_RETURN_IF_ERROR(preempt_ckpt->Flush());
    preempt_saved = true;
    const absl::Time durable = absl::Now();
    // The bound for this event: the window between the two checks the signal fell in (one
    // step, plus an epoch's evaluation when it crossed one) plus the save.
    if (by == TimeLimit::kName) {
      const TimeLimit::Stop& stop = *time_limit->stop();
      std::fprintf(stderr,
                   "train: rank %d: time limit: stopped at iteration %lld after %.1f s of a %.0f s budget (next step "
                   "%.2f s, save reserve %.2f s); %s durable %.0f ms later\n",
                   rank, static_cast<long long>(trainer.state().iteration), stop.elapsed_sec, stop.budget_sec,
                   stop.next_step_sec, stop.save_reserve_sec,
                   preempt_ckpt->latest_checkpoint().value_or("checkpoint").c_str(),
                   absl::ToDoubleMilliseconds(durable - save_start));
    } else if (std::optional<absl::Time> signalled = Preemption::signal_time(); signalled && !preemption.stop_window()) {
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
  }
  report.SetOutcome(by);
  if (report.stopped_by == "preempted") {
    // Under torchrun's elastic agent a clean exit ends the job; a preempted stop exits 4 so that
    // the agents start the workers again and --resume continues from the preemption checkpoint,
    // when every rank's agent has a restart left (each agent counts its own: one that joined
    // later, or was restarted for a membership change, has another count) and the flags can
    // continue the run (--resume; --resume_from would start over from its file). Agreed, so
    // that every rank exits with the same code: a node exiting 0 would wait in torchrun's exit
    // barrier for nodes that restarted. (Every rank takes part, launched by an agent or not.)
    double restart = launch.restarts_left() && flags.resume ? 1.0 : 0.0;
    EMBER_RETURN_IF_ERROR(comm.AllReduce(absl::MakeSpan(&restart, 1), dist::ReduceOp::kMin, absl::Now() + deadline));
    if (restart == 1.0) report.exit_code = kExitPreemptedRestart;
    if (rank == 0 && restart == 1.0) {
      std::fprintf(stderr,
                   "train: preempted under torchrun's elastic agent with restarts left on every rank (this "
                   "attempt: %d of %d): exit %d so that the agent restarts the workers (unless it is stopping "
                   "itself); --resume continues from %s\n",
                   launch.restart_count + 1, launch.max_restarts + 1, kExitPreemptedRestart,
                   preempt_ckpt->latest_checkpoint().value_or("the preemption checkpoint").c_str());
    } else if (rank == 0 && launch.max_restarts > 0) {
      std::fprintf(stderr,
                   "train: preempted under torchrun's elastic agent: exit 0, which ends the elastic job (%s); "
                   "--resume continues from %s\n",
                   !flags.resume ? "launched without --resume, a restart could not continue this run"
                                 : "a rank's agent has no restart left",
                   preempt_ckpt->latest_checkpoint().value_or("the preemption checkpoint").c_str());
    }
  }
  // The trainer's Run() has awaited its last asynchronous epoch checkpoint (Checkpoint registers
  // that with Engine::AtOutermostRunEnd; after a failed run, rank 0's writer only, so that the
  // final line names what is on disk). This Flush() is then a no-op agreement, kept for a
  // checkpoint saved outside the run.
  return ckpt->Flush();
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Ember's distributed trainer: data-parallel SGD of an MLP classifier.");
  if (HandleHelp(argc, argv)) return 0;  // a request, not an error (abseil's own handling exits 1)
  InstallFinalLineAtExit();
  absl::ParseCommandLine(argc, argv);
  Preemption preemption;  // SIGTERM, SIGINT, SIGUSR1 on any rank: every rank stops and saves

  // The World is the default communicator of every engine and checkpoint created below.
  absl::StatusOr<std::unique_ptr<dist::World>> world = dist::LaunchWorld(LaunchOptionsFromFlags());
  if (!world.ok()) {
    std::fprintf(stderr, "train: error: %s\n", std::string(world.status().message()).c_str());
    return kExitError;  // the final line comes from InstallFinalLineAtExit
  }
  dist::Communicator& comm = (*world)->communicator();
  RunReport report{.rank = comm.rank(), .world_size = comm.world_size()};
  std::unique_ptr<DirectoryLock> dir_lock;  // rank 0: --output_dir is ours until exit
  absl::Status status = [&]() -> absl::Status {
    absl::StatusOr<TrainFlags> flags = ReadTrainFlags(comm.world_size());
    // What defines the run is the same on every rank, checked before anything else communicates
    // (a rank with another --batch_size would post collectives of other sizes): a difference is
    // one error on every rank naming each flag and each rank's value.
    EMBER_RETURN_IF_ERROR(dist::AgreeOnSettings(
        comm, "trainer flags", RunDefiningFlags(flags.ok() ? "" : std::string(flags.status().message())),
        LaunchOptionsFromFlags().init_timeout));
    EMBER_RETURN_IF_ERROR(flags.status());
    return Train(*flags, comm, preemption, report, &dir_lock);
  }();
  if (!status.ok()) {
    std::fprintf(stderr, "train: rank %d: error: %s\n", report.rank, std::string(status.message()).c_str());
    report.SetError();
    // A failure of this rank alone (its data missing, its disk full) outside any collective: the
    // peers, waiting in the next one, are told at once ("rank R failed: ...") instead of waiting
    // out --deadline_s. Nothing is sent when a collective failed already or for a peer's notice.
    if (comm.world_size() > 1) comm.Fail(status);
  }
  return Finish(report, **world);
}

}  // namespace
}  // namespace ember::tools

int main(int argc, char** argv) { return ember::tools::Main(argc, argv); }
