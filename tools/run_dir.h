// File: tools/run_dir.h
//
// The trainer's run and its --output_dir: who owns the directory (TakeOutputDir), the settings
// saved in every checkpoint and checked on resume (RunSettings), and a checkpoint file read once
// and shared with every rank (ReadOnRootAndShare).
#ifndef EMBER_TOOLS_RUN_DIR_H_
#define EMBER_TOOLS_RUN_DIR_H_

#include <cstdint>
#include <memory>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/directory_lock.h"
#include "base/file_system.h"
#include "distributed/communicator.h"
#include "handlers/checkpoint/stateful.h"
#include "handlers/serialization/value.h"

namespace ember::tools {

// The settings that decide what a resumed run means, saved in every checkpoint as "run" and
// checked on resume: another global batch would change what a step and an epoch are; another
// model (--model, --hidden) could not load the weights. The number of ranks may change (the
// sample order does not depend on it; see ShardedSource).
class RunSettings : public Stateful {
 public:
  RunSettings(int64_t global_batch, int batch_size, int world_size, std::string model, std::vector<int64_t> hidden,
              int patience)
      : global_batch_(global_batch),
        batch_size_(batch_size),
        world_size_(world_size),
        model_(std::move(model)),
        hidden_(std::move(hidden)),
        patience_(patience) {}
  Value StateDict() const override;
  absl::Status LoadStateDict(const Value&) override { return absl::OkStatus(); }  // see Check

  // `run` is the checkpoint's "run" record (nullptr: a checkpoint without one, e.g. written in
  // Python; then the epoch lengths are compared). `from` names the checkpoint in the error.
  absl::Status Check(const Value* run, const std::string& from, int64_t old_epoch_length,
                     int64_t new_epoch_length) const;
  // The model the checkpoint `from` was trained with (its "run" record's model and hidden, when
  // it has them) is this run's: otherwise kFailedPrecondition naming both, e.g. "this run's model
  // is --model=mlp --hidden=256,128 but X was trained with --model=cnn --hidden=32".
  absl::Status CheckModel(const Value* run, const std::string& from) const;
  // The --patience the checkpoint's run was trained with (its "run" record's "patience"), or
  // nullopt when it does not say (an older file, or one written in Python).
  static std::optional<int64_t> Patience(const Value* run);

 private:
  int64_t global_batch_;
  int batch_size_;
  int world_size_;
  std::string model_;
  std::vector<int64_t> hidden_;
  int patience_;
};

// What the epoch in progress had done when a checkpoint was taken, so that the metrics line of an
// epoch a preemption interrupted covers the whole epoch after the resume, not only its second
// part: the sum and count of rank 0's step outputs (the loss), the samples of every rank, and the
// seconds spent training and in all. Saved in every checkpoint as "epoch_so_far"; applied only
// when resuming from a mid-epoch checkpoint (an epoch-end one starts a new epoch).
struct EpochTally {
  double output_sum = 0;
  int64_t steps = 0;
  int64_t samples = 0;
  double train_s = 0;
  double epoch_s = 0;

  EpochTally& operator+=(const EpochTally& o);
  Value ToValue() const;
  // A checkpoint's "epoch_so_far" record; absent (an older file, or one written in Python): zero.
  // Present but malformed: kDataLoss naming the field.
  static absl::StatusOr<EpochTally> FromValue(const Value* v);
  // The record agrees with the checkpoint's position: `steps` is how far `iteration` is into its
  // epoch, and no more samples than those steps of `global_batch` hold; else kDataLoss naming it.
  absl::Status CheckAgainst(int64_t iteration, int64_t epoch_length, int64_t global_batch) const;
};

class EpochSoFar : public Stateful {
 public:
  explicit EpochSoFar(std::function<EpochTally()> now) : now_(std::move(now)) {}
  Value StateDict() const override { return now_().ToValue(); }
  absl::Status LoadStateDict(const Value&) override { return absl::OkStatus(); }  // see EpochTally::FromValue

 private:
  std::function<EpochTally()> now_;
};

// The file system of --eval_only, which writes nothing: reads go to `target`; every change
// (a new file, a rename, a removal, a new directory, a chmod) is refused with kPermissionDenied
// saying so, and a directory counts as writable (nothing will be written to it), so that a
// read-only copy of a run can be evaluated. A corrupt checkpoint is then skipped, not moved
// aside, and a live run's temporary files are left alone.
class ReadOnlyFileSystem final : public FileSystemWrapper {
 public:
  explicit ReadOnlyFileSystem(FileSystem* target) : FileSystemWrapper(target) {}
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& p) override { return Refuse(p); }
  absl::Status Rename(const std::string& from, const std::string&) override { return Refuse(from); }
  absl::Status RemoveFile(const std::string& p) override { return Refuse(p); }
  absl::Status SyncDir(const std::string&) override { return absl::OkStatus(); }
  absl::Status CreateDir(const std::string& d) override { return Refuse(d); }
  absl::Status RemoveDir(const std::string& d) override { return Refuse(d); }
  absl::Status Chmod(const std::string& p, unsigned) override { return Refuse(p); }
  bool IsWritableDirectory(const std::string&) override { return true; }

 private:
  static absl::Status Refuse(const std::string& path);
};

// How long a trainer waits for another run's lock on --output_dir before failing.
inline constexpr absl::Duration kLockWait = absl::Seconds(10);

// Rank 0 owns --output_dir for the run: it creates it, locks it (a second trainer on the same
// directory, or a requeued job while the ranks of a killed one still wind down, waits up to
// kLockWait and then fails naming the holder) and, without `resuming`, refuses a directory that
// already holds a run. Every rank gets the verdict; rank 0's `lock` holds the directory until it
// is destroyed.
absl::Status TakeOutputDir(dist::Communicator& comm, const std::string& dir, bool resuming, absl::Time deadline,
                           std::unique_ptr<DirectoryLock>* lock);

// Reads a checkpoint file on rank 0 (every check of the torch.save codec, before sharing) and
// gives every rank its content.
absl::StatusOr<Value> ReadOnRootAndShare(dist::Communicator& comm, const std::string& path, absl::Time deadline);

}  // namespace ember::tools

#endif  // EMBER_TOOLS_RUN_DIR_H_
