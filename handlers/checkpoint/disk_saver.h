// File: handlers/checkpoint/disk_saver.h
//
// DiskSaver (ignite's DiskSaver): a SaveHandler that writes and reads torch.save-format files in
// a directory through the FileSystem seam: atomically by default (temporary file, fsync, rename,
// fsync of the directory; see base/atomic_file.h), with Ember's metadata in an extra record
// ("ember_meta") so that a restarted run knows each file's priority and order. List() reads only
// each file's trailer (zip directory, metadata, checksum record: ReadRecordFromTrailer), so its
// cost does not grow with the checkpoints' size; Verify() reads a file whole and checks every
// record's CRC-32, and Checkpoint calls it before it resumes from a file or ranks it as best. A
// corrupt file of Ember's own (found by either) is moved aside as "NAME.pt.corrupt" (and logged:
// base/log.h), so it is never ranked, reported, deleted or overwritten; a .pt file Ember did not
// write (Python's torch.save) is left alone and reported in Rejected() with the reason. Files
// this saver wrote or verified are remembered as verified (until removed or set aside), so none
// is read twice.
//
// Thread safety: Save/Remove/List may run on a background thread (asynchronous saving) while the
// training thread does nothing else with the same saver.
//
// Example:
//   auto saver = ember::DiskSaver::Create({.dirname = "runs/ckpt", .require_empty = false});
//   if (!saver.ok()) return saver.status();
#ifndef EMBER_HANDLERS_DISK_SAVER_H_
#define EMBER_HANDLERS_DISK_SAVER_H_

#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "base/file_system.h"
#include "base/mutex.h"
#include "distributed/communicator.h"
#include "handlers/checkpoint/save_handler.h"

namespace ember {

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
  // Reads `filename` whole and checks every record (VerifyTorchSaveFile, Ember's checksum
  // required); a corrupt one is quarantined (kDataLoss returned).
  absl::Status Verify(const std::string& filename) override;
  absl::StatusOr<Value> Load(const std::string& filename) override;
  absl::StatusOr<std::string> ReadBytes(const std::string& filename) override;
  std::string Location(const std::string& filename) const override;
  // Moves a corrupt checkpoint of Ember's own aside ("NAME.pt.corrupt"), logs a warning and
  // records it in Rejected().
  void Quarantine(const std::string& filename, const absl::Status& why) override;
  // Renames it "NAME.pt.abandoned" (".abandoned.N" when taken) and syncs the directory.
  absl::StatusOr<std::string> SetAside(const std::string& filename) override;

  const std::string& dirname() const { return dirname_; }
  const DiskSaverOptions& options() const { return options_; }

 private:
  DiskSaver(DiskSaverOptions options, std::string dirname)
      : options_(std::move(options)), dirname_(std::move(dirname)) {}
  void Reject(const std::string& filename, const absl::Status& why);
  void Forget(const std::string& filename);
  DiskSaverOptions options_;
  std::string dirname_;  // absolute
  mutable Mutex mu_;
  std::vector<std::string> rejected_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> verified_ ABSL_GUARDED_BY(mu_);  // written or verified by this saver
};

}  // namespace ember

#endif  // EMBER_HANDLERS_DISK_SAVER_H_
