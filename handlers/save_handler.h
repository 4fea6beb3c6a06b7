// File: handlers/save_handler.h
//
// SaveHandler (ignite's BaseSaveHandler): where Checkpoint puts its files. Checkpoint calls Save
// and Remove on the saving rank only (its outcome is then broadcast to every rank), and List at
// start to rebuild its retention list from what is already there.
//
// DiskSaver writes and reads torch.save-format files in a directory through the FileSystem seam:
// atomically by default (temporary file, fsync, rename, fsync of the directory; see
// base/atomic_file.h), with Ember's metadata in an extra record ("ember_meta") so that a restarted
// run knows each file's priority and order. List() verifies every file before it reports it:
// a corrupt file of Ember's own is moved aside as "NAME.pt.corrupt" (and said on stderr), so it
// is never ranked, reported, deleted or overwritten. InMemorySaver keeps the serialized bytes in memory
// (tests, and users who ship checkpoints elsewhere).
//
// Thread safety: Save/Remove/List may run on a background thread (asynchronous saving) while the
// training thread does nothing else with the same handler.
#ifndef EMBER_HANDLERS_SAVE_HANDLER_H_
#define EMBER_HANDLERS_SAVE_HANDLER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "base/file_system.h"
#include "distributed/communicator.h"
#include "handlers/value.h"

namespace ember {

// What Checkpoint records about each file (stored inside the file by DiskSaver).
struct CheckpointMetadata {
  std::string basename;    // "{prefix}_{name}" or "{name}" (ignite's metadata["basename"])
  std::string score_name;
  double priority = 0;     // the score, or the global step
  int64_t save_index = 0;  // 0, 1, 2, ... in save order
  std::optional<int64_t> global_step;

  std::string Serialize() const;
  static absl::StatusOr<CheckpointMetadata> Parse(const std::string& text);
};

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
  // Sets a corrupt stored checkpoint aside so that it is never used, ranked or overwritten
  // (DiskSaver renames it; the default does nothing).
  virtual void Quarantine(const std::string& filename, const absl::Status& why) {}
  virtual absl::StatusOr<Value> Load(const std::string& filename) = 0;
  // The stored bytes of `filename` (to hand a checkpoint to ranks that cannot read the store).
  virtual absl::StatusOr<std::string> ReadBytes(const std::string& filename) = 0;
  // Where `filename` is (DiskSaver: an absolute path), as last_checkpoint reports it.
  virtual std::string Location(const std::string& filename) const { return filename; }
};

struct DiskSaverOptions {
  std::string dirname;
  bool atomic = true;
  bool create_dir = true;
  bool require_empty = true;  // no *.pt file may be there already (ignite)
  int save_on_rank = 0;
  FileSystem* fs = nullptr;   // default: FileSystem::Default()
};

class DiskSaver final : public SaveHandler {
 public:
  // On the saving rank: creates the directory (create_dir), checks that it is a writable
  // directory and (require_empty) holds no *.pt file, and removes stale temporary files of
  // Ember's own. With a communicator, every rank gets the saving rank's verdict (a collective:
  // call it on every rank); without one, this process is the saving rank.
  static absl::StatusOr<std::unique_ptr<DiskSaver>> Create(DiskSaverOptions options,
                                                           dist::Communicator* comm = nullptr);

  absl::Status Save(const Value& checkpoint, const std::string& filename,
                    const CheckpointMetadata& metadata) override;
  absl::Status Remove(const std::string& filename) override;
  absl::StatusOr<std::vector<std::pair<std::string, CheckpointMetadata>>> List() override;
  std::vector<std::string> Rejected() const override;
  absl::StatusOr<Value> Load(const std::string& filename) override;
  absl::StatusOr<std::string> ReadBytes(const std::string& filename) override;
  std::string Location(const std::string& filename) const override;
  // Moves a corrupt checkpoint of Ember's own aside ("NAME.pt.corrupt"), says so on stderr and
  // records it in Rejected().
  void Quarantine(const std::string& filename, const absl::Status& why) override;

  const std::string& dirname() const { return dirname_; }
  const DiskSaverOptions& options() const { return options_; }

 private:
  DiskSaver(DiskSaverOptions options, std::string dirname)
      : options_(std::move(options)), dirname_(std::move(dirname)) {}
  void Reject(const std::string& filename, const absl::Status& why);
  DiskSaverOptions options_;
  std::string dirname_;  // absolute
  mutable std::mutex mu_;
  std::vector<std::string> rejected_;
};

class InMemorySaver final : public SaveHandler {
 public:
  absl::Status Save(const Value& checkpoint, const std::string& filename,
                    const CheckpointMetadata& metadata) override;
  absl::Status Remove(const std::string& filename) override;
  absl::StatusOr<std::vector<std::pair<std::string, CheckpointMetadata>>> List() override;
  absl::StatusOr<Value> Load(const std::string& filename) override;
  absl::StatusOr<std::string> ReadBytes(const std::string& filename) override;

  std::vector<std::string> filenames() const;
  // Saves and removes, in order ("save a.pt", "remove a.pt").
  std::vector<std::string> ops() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::pair<std::string, CheckpointMetadata>> files_;
  std::vector<std::string> ops_;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_SAVE_HANDLER_H_
