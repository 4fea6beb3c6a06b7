// File: handlers/checkpoint/save_handler.h
//
// SaveHandler (ignite's BaseSaveHandler): where Checkpoint puts its files. Checkpoint calls Save
// and Remove on the saving rank only (its outcome is then broadcast to every rank), and List at
// start to rebuild its retention list from what is already there.
// Implementations: DiskSaver (disk_saver.h) and InMemorySaver (in_memory_saver.h).
//
// Thread safety: Save/Remove/List may run on a background thread (asynchronous saving) while the
// training thread does nothing else with the same handler.
#ifndef EMBER_HANDLERS_SAVE_HANDLER_H_
#define EMBER_HANDLERS_SAVE_HANDLER_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "handlers/serialization/metadata.h"
#include "handlers/serialization/value.h"

namespace ember {

class SaveHandler {
 public:
  virtual ~SaveHandler() = default;
  virtual absl::Status Save(const Value& checkpoint, const std::string& filename,
                            const CheckpointMetadata& metadata) = 0;
  virtual absl::Status Remove(const std::string& filename) = 0;
  // Checkpoints already stored, with their metadata (files without Ember metadata are not
  // listed: Checkpoint never touches what it did not write).
  virtual absl::StatusOr<std::vector<std::pair<std::string, CheckpointMetadata>>> List() {
    return std::vector<std::pair<std::string, CheckpointMetadata>>();
  }
  // Files List() saw and did not adopt, as "filename: reason": unreadable, corrupt (a corrupt file
  // of Ember's own is moved aside, see DiskSaver), or not written by Ember.
  virtual std::vector<std::string> Rejected() const { return {}; }
  // Checks a listed checkpoint in full before it is trusted (List() may report a file from its
  // trailer alone, see DiskSaver): OK, or why not; a corrupt one (kDataLoss) has been set aside
  // (Quarantine). Checkpoint calls it before a file is ranked as best; the file a run resumes from
  // is read and checked whole anyway. The default: nothing to check.
  virtual absl::Status Verify(const std::string& filename) { return absl::OkStatus(); }
  // Sets a corrupt stored checkpoint aside so that it is never used, ranked or overwritten
  // (DiskSaver renames it; the default does nothing).
  virtual void Quarantine(const std::string& filename, const absl::Status& why) {}
  // Sets a stored checkpoint aside, kept but never listed, ranked, loaded or overwritten again
  // (DiskSaver renames it "NAME.pt.abandoned"): Checkpoint does so with the checkpoints of a
  // future that the run abandoned (it resumed from an earlier point). Returns where it now is.
  // The default cannot: kUnimplemented.
  virtual absl::StatusOr<std::string> SetAside(const std::string& filename) {
    return absl::UnimplementedError(absl::StrCat("this save handler cannot set ", filename, " aside"));
  }
  virtual absl::StatusOr<Value> Load(const std::string& filename) = 0;
  // The stored bytes of `filename` (to hand a checkpoint to ranks that cannot read the store).
  virtual absl::StatusOr<std::string> ReadBytes(const std::string& filename) = 0;
  // Where `filename` is (DiskSaver: an absolute path), as last_checkpoint reports it.
  virtual std::string Location(const std::string& filename) const { return filename; }
};

}  // namespace ember

#endif  // EMBER_HANDLERS_SAVE_HANDLER_H_
