#include "handlers/checkpoint/model_checkpoint.h"

#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "distributed/default_communicator.h"
#include "distributed/settings_agreement.h"

namespace ember {

absl::StatusOr<std::unique_ptr<Checkpoint>> ModelCheckpoint::Create(ModelCheckpointOptions options,
                                                                    ObjectMap to_save,
                                                                    dist::Communicator* comm) {
  absl::Status valid;
  if (options.disk.save_on_rank != 0 && options.disk.save_on_rank != options.checkpoint.save_on_rank) {
    valid = absl::InvalidArgumentError(absl::StrCat(
        "ModelCheckpoint: disk.save_on_rank (", options.disk.save_on_rank,
        ") differs from checkpoint.save_on_rank (", options.checkpoint.save_on_rank,
        "); set checkpoint.save_on_rank only"));
  }
  // Without `comm`, the checkpoint follows the World alive now (none: this process alone) and
  // notices when it is gone (Checkpoint::BindCommunicator).
  const bool given = comm != nullptr;
  if (!given) comm = dist::DefaultCommunicator();
  // Every rank holds the same options and objects (save_on_rank above all: two saving ranks would
  // write the same files), agreed before the saver's first collective.
  if (comm != nullptr && comm->world_size() > 1) {
    dist::SettingList disk;
    disk.Add("dirname", options.disk.dirname)
        .AddBool("atomic", options.disk.atomic)
        .AddBool("create_dir", options.disk.create_dir)
        .AddBool("require_empty", options.disk.require_empty);
    EMBER_RETURN_IF_ERROR(
        Checkpoint::AgreeAtCreate(*comm, "ModelCheckpoint options", to_save, options.checkpoint, valid, disk));
  }
  if (to_save.empty()) return absl::InvalidArgumentError("No objects to checkpoint found.");
  EMBER_RETURN_IF_ERROR(valid);
  options.disk.save_on_rank = options.checkpoint.save_on_rank;
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<DiskSaver> saver, DiskSaver::Create(std::move(options.disk), comm));
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint,
                         Checkpoint::Create(std::move(to_save), std::shared_ptr<SaveHandler>(std::move(saver)),
                                            std::move(options.checkpoint)));
  if (given) checkpoint->BindCommunicator(comm);
  return checkpoint;
}

}  // namespace ember
