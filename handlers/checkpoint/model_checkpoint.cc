#include "handlers/checkpoint/model_checkpoint.h"

#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "distributed/default_communicator.h"

namespace ember {

absl::StatusOr<std::unique_ptr<Checkpoint>> ModelCheckpoint::Create(ModelCheckpointOptions options,
                                                                    ObjectMap to_save,
                                                                    dist::Communicator* comm) {
  if (to_save.empty()) return absl::InvalidArgumentError("ModelCheckpoint: no objects to checkpoint (to_save is empty)");
  if (options.disk.save_on_rank != 0 && options.disk.save_on_rank != options.checkpoint.save_on_rank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ModelCheckpoint: disk.save_on_rank (", options.disk.save_on_rank,
        ") differs from checkpoint.save_on_rank (", options.checkpoint.save_on_rank,
        "); set checkpoint.save_on_rank only"));
  }
  options.disk.save_on_rank = options.checkpoint.save_on_rank;
  if (comm == nullptr) comm = dist::DefaultCommunicator();
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<DiskSaver> saver, DiskSaver::Create(std::move(options.disk), comm));
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint,
                         Checkpoint::Create(std::move(to_save), std::shared_ptr<SaveHandler>(std::move(saver)),
                                            std::move(options.checkpoint)));
  checkpoint->BindCommunicator(comm);
  return checkpoint;
}

}  // namespace ember
