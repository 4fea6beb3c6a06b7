#include "tools/run_dir.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file_system.h"
#include "base/status_macros.h"
#include "distributed/root_action.h"
#include "handlers/serialization/torch_save.h"

namespace ember::tools {

Value RunSettings::StateDict() const {
  Value v = Value::Dict();
  v.Set("global_batch", Value(global_batch_));
  v.Set("batch_size", Value(int64_t{batch_size_}));
  v.Set("world_size", Value(int64_t{world_size_}));
  v.Set("model", Value(model_));
  v.Set("hidden", Value(absl::StrJoin(hidden_, ",")));
  v.Set("patience", Value(int64_t{patience_}));
  return v;
}

EpochTally& EpochTally::operator+=(const EpochTally& o) {
  output_sum += o.output_sum;
  steps += o.steps;
  samples += o.samples;
  train_s += o.train_s;
  epoch_s += o.epoch_s;
  return *this;
}

Value EpochTally::ToValue() const {
  Value v = Value::Dict();
  v.Set("output_sum", Value(output_sum));
  v.Set("steps", Value(steps));
  v.Set("samples", Value(samples));
  v.Set("train_s", Value(train_s));
  v.Set("epoch_s", Value(epoch_s));
  return v;
}

absl::StatusOr<EpochTally> EpochTally::FromValue(const Value* v) {
  EpochTally t;
  if (v == nullptr) return t;
  const auto bad = [](absl::string_view what) {
    return absl::DataLossError(absl::StrCat("the checkpoint's \"epoch_so_far\" record ", what));
  };
  if (!v->is_dict()) return bad("is not a dict");
  auto integer = [&](const char* name) -> absl::StatusOr<int64_t> {
    const Value* f = v->Find(name);
    if (f == nullptr || !f->is_int()) return bad(absl::StrCat("has no integer \"", name, "\""));
    if (f->as_int() < 0) return bad(absl::StrCat("has \"", name, "\" = ", f->as_int(), " (a count, >= 0)"));
    return f->as_int();
  };
  auto number = [&](const char* name, bool seconds) -> absl::StatusOr<double> {
    const Value* f = v->Find(name);
    if (f == nullptr || !f->is_number()) return bad(absl::StrCat("has no number \"", name, "\""));
    const double x = f->as_double();
    // A loss sum may be NaN or infinite (a diverged epoch); a time is a finite number >= 0.
    if (seconds && !(std::isfinite(x) && x >= 0)) return bad(absl::StrCat("has \"", name, "\" = ", x, " (seconds, >= 0)"));
    return x;
  };
  EMBER_ASSIGN_OR_RETURN(t.output_sum, number("output_sum", false));
  EMBER_ASSIGN_OR_RETURN(t.steps, integer("steps"));
  EMBER_ASSIGN_OR_RETURN(t.samples, integer("samples"));
  EMBER_ASSIGN_OR_RETURN(t.train_s, number("train_s", true));
  EMBER_ASSIGN_OR_RETURN(t.epoch_s, number("epoch_s", true));
  return t;
}

absl::Status EpochTally::CheckAgainst(int64_t iteration, int64_t epoch_length, int64_t global_batch) const {
  const int64_t done = epoch_length > 0 ? iteration % epoch_length : 0;
  if (steps != done) {
    return absl::DataLossError(absl::StrCat("the checkpoint's \"epoch_so_far\" record has \"steps\" = ", steps,
                                            " but the checkpoint is ", done, " step(s) into its epoch (iteration ",
                                            iteration, ", ", epoch_length, " per epoch)"));
  }
  if (samples > steps * global_batch) {
    return absl::DataLossError(absl::StrCat("the checkpoint's \"epoch_so_far\" record has \"samples\" = ", samples,
                                            ", more than its ", steps, " step(s) of a global batch of ", global_batch,
                                            " hold"));
  }
  return absl::OkStatus();
}

std::optional<int64_t> RunSettings::Patience(const Value* run) {
  const Value* patience = run != nullptr ? run->Find("patience") : nullptr;
  if (patience == nullptr || !patience->is_int()) return std::nullopt;
  return patience->as_int();
}

absl::Status RunSettings::CheckModel(const Value* run, const std::string& from) const {
  const Value* model = run != nullptr ? run->Find("model") : nullptr;
  const Value* hidden = run != nullptr ? run->Find("hidden") : nullptr;
  if (model == nullptr || hidden == nullptr || !model->is_string() || !hidden->is_string()) return absl::OkStatus();
  const std::string mine = absl::StrCat("--model=", model_, " --hidden=", absl::StrJoin(hidden_, ","));
  const std::string theirs = absl::StrCat("--model=", model->as_string(), " --hidden=", hidden->as_string());
  if (mine == theirs) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "this run's model is ", mine, " but ", from, " was trained with ", theirs,
      " (other layer sizes: its weights cannot load); resume with ", theirs, ", or train anew in another --output_dir"));
}

absl::Status RunSettings::Check(const Value* run, const std::string& from, int64_t old_epoch_length,
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

absl::Status ReadOnlyFileSystem::Refuse(const std::string& path) {
  return absl::PermissionDeniedError(absl::StrCat(path, ": not changed (--eval_only writes nothing)"));
}

absl::Status TakeOutputDir(dist::Communicator& comm, const std::string& dir, bool resuming, absl::Time deadline,
                           std::unique_ptr<DirectoryLock>* lock) {
  return dist::RunOnRoot(comm, 0, deadline, [&]() -> absl::Status {
    FileSystem* fs = FileSystem::Default();
    if (fs->Exists(dir) && !fs->IsDirectory(dir)) {
      return absl::FailedPreconditionError(absl::StrCat("--output_dir=", dir, " is not a directory"));
    }
    EMBER_RETURN_IF_ERROR(fs->CreateDirs(dir));
    if (!fs->IsWritableDirectory(dir)) {
      return absl::PermissionDeniedError(absl::StrCat(
          "--output_dir=", dir, " is not writable by this process (a read-only file system or copy?): training "
          "writes checkpoints there; choose another --output_dir (--eval_only evaluates a read-only run)"));
    }
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

absl::StatusOr<Value> ReadOnRootAndShare(dist::Communicator& comm, const std::string& path, absl::Time deadline) {
  auto bytes = std::make_shared<std::string>();
  EMBER_RETURN_IF_ERROR(dist::RunOnRoot(comm, 0, deadline, [&]() -> absl::Status {
    if (FileSystem::Default()->IsDirectory(path)) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": is a directory, not a checkpoint file"));
    }
    EMBER_ASSIGN_OR_RETURN(*bytes, FileSystem::Default()->ReadFile(path));
    return VerifyTorchSave(*bytes, path).status();  // every CRC-32 and checksum, before sharing
  }));
  EMBER_RETURN_IF_ERROR(dist::BroadcastChecked(comm, *bytes, 0, path, deadline));
  // Rank 0's verified bytes, exactly (BroadcastChecked compared every rank's CRC of them): parsed
  // once on each rank, in place (the tensors are views of the buffer), without the per-record
  // CRC-32s a second time.
  return ReadVerifiedTorchSave(std::move(bytes), path);
}

}  // namespace ember::tools
