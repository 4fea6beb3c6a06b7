// File: handlers/checkpoint/model_checkpoint.h
//
// ModelCheckpoint (ignite's ModelCheckpoint): a Checkpoint (checkpoint.h) that writes into its own
// DiskSaver (disk_saver.h). Its options are those two components' options, composed, not copied:
// `disk` says where and how files are written (dirname, atomic, require_empty, create_dir, fs),
// `checkpoint` what is kept and how files are named (n_saved, score_name, keep_last, ...). The
// saving rank is checkpoint.save_on_rank; disk.save_on_rank must be left at 0 or equal it.
//
// Multi-rank: `comm` (default: the process's default communicator, i.e. the World of
// dist::LaunchWorld(), else this process alone) is bound to the checkpoint. Create is a
// collective (every rank calls it) that gives every rank the saving rank's verdict on the
// directory. The checkpoint then refuses to save from an engine whose communicator has another
// world size (say an evaluator left on a single-process communicator in a multi-rank job), naming
// both sizes, and ResumeLatest() / Flush() without arguments use the bound communicator. Without
// a World (and no `comm`), the checkpoint is this process's alone and just works; used after the
// World it was created in is gone, it fails (Checkpoint::BindCommunicator).
//
// Example:
//   auto checkpoint = ember::ModelCheckpoint::Create(
//       {.disk = {.dirname = "runs/ckpt"}, .checkpoint = {.score_name = "acc", .n_saved = 2}},
//       {{"model", model}, {"optimizer", optimizer}, {"trainer", trainer}});
//   if (!checkpoint.ok()) return checkpoint.status();
//   evaluator.On(ember::Events::Completed(), **checkpoint);
#ifndef EMBER_HANDLERS_MODEL_CHECKPOINT_H_
#define EMBER_HANDLERS_MODEL_CHECKPOINT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "distributed/communicator.h"
#include "handlers/checkpoint/checkpoint.h"
#include "handlers/checkpoint/disk_saver.h"
#include "handlers/checkpoint/saveable.h"

namespace ember {

struct ModelCheckpointOptions {
  DiskSaverOptions disk;
  CheckpointOptions checkpoint;
};

class ModelCheckpoint {
 public:
  ModelCheckpoint() = delete;
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Create(ModelCheckpointOptions options,
                                                            ObjectMap to_save,
                                                            dist::Communicator* comm = nullptr);
};

}  // namespace ember

#endif  // EMBER_HANDLERS_MODEL_CHECKPOINT_H_
