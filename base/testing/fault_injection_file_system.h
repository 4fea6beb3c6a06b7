// File: base/testing/fault_injection_file_system.h
//
// FaultInjectionFileSystem: a FileSystem over a real one (files really are written, in a test's
// temporary directory) that can
//   - fail the n-th mutating operation from now (create, append, fsync, close, chmod, rename,
//     remove, fsync of a directory, mkdir) with a given error (ENOSPC, EIO, ...);
//   - fail reads (ReadFile, ReadFileTail) of paths containing a substring with a given error (EIO on resume);
//   - call a hook before every operation (a test delays an asynchronous writer with it);
//   - SimulateCrash(): drop everything that was not made durable, as a power loss would: file
//     data appended after the file's last fsync, and directory entries (file creations, renames,
//     removals, and directory creations and removals) made after the parent directory's last
//     fsync (as leveldb's fault_injection_test does). A directory whose creation is undone
//     takes everything in it along, fsynced or not.
// It logs every mutating operation ("rename a -> b"), so tests can check the protocol's order.
//
// Thread-safe (one mutex), so an asynchronous writer can use it.
#ifndef EMBER_BASE_TESTING_FAULT_INJECTION_FILE_SYSTEM_H_
#define EMBER_BASE_TESTING_FAULT_INJECTION_FILE_SYSTEM_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "base/file_system.h"
#include "base/mutex.h"

namespace ember::testing {

class FaultInjectionFileSystem final : public FileSystemWrapper {
 public:
  explicit FaultInjectionFileSystem(FileSystem* base = FileSystem::Default())
      : FileSystemWrapper(base) {}

  // The `n`-th mutating operation from now (0 = the next one) fails with `error`; only that one.
  void FailOp(int n, absl::Status error);
  // Every mutating operation from the `n`-th on fails with `error` (a full disk stays full).
  void FailFrom(int n, absl::Status error);
  void ClearFaults();
  // ReadFile of any path containing `path_part` fails with `error` (until ClearFaults).
  void FailReads(std::string path_part, absl::Status error);
  // Called (outside the lock, on the calling thread) before every operation, with its log text
  // ("create /d/x.pt.tmp", "read /d/x.pt"); may block to delay the caller.
  void SetHook(std::function<void(const std::string& op)> hook);
  // Mutating operations performed (or attempted) so far, and their log.
  int ops() const;
  std::vector<std::string> log() const;
  // Drops what a power loss would drop (see the header comment); then everything is durable.
  absl::Status SimulateCrash();

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override;
  absl::Status Rename(const std::string& from, const std::string& to) override;
  absl::Status RemoveFile(const std::string& path) override;
  absl::Status SyncDir(const std::string& dir) override;
  absl::Status CreateDir(const std::string& dir) override;
  absl::Status RemoveDir(const std::string& dir) override;
  absl::StatusOr<std::string> ReadFile(const std::string& path) override;
  // Reads of a file's end fail as ReadFile does (FailReads) and are logged as "read PATH [FAILED] (tail)".
  absl::StatusOr<std::string> ReadFileTail(const std::string& path, size_t max_bytes,
                                           uint64_t* file_size) override;
  absl::Status Chmod(const std::string& path, unsigned mode) override;

  // Used by the files it hands out.
  absl::Status Mutate(const std::string& what) ABSL_LOCKS_EXCLUDED(mu_);
  void Appended(const std::string& path, size_t size) ABSL_LOCKS_EXCLUDED(mu_);
  void Synced(const std::string& path) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void RunHook(const std::string& op) ABSL_LOCKS_EXCLUDED(mu_);

  struct FileState {
    size_t size = 0;
    size_t synced = 0;
  };
  struct DirOp {
    enum Kind { kCreate, kRename, kRemove, kMkdir, kRmdir } kind;
    std::string a, b;                   // path (create/remove), from/to (rename)
    std::optional<std::string> saved;   // content replaced or removed
  };

  mutable Mutex mu_;
  int ops_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> log_ ABSL_GUARDED_BY(mu_);
  std::optional<int> fail_at_ ABSL_GUARDED_BY(mu_);
  bool fail_from_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::string read_fault_path_ ABSL_GUARDED_BY(mu_);
  absl::Status read_error_ ABSL_GUARDED_BY(mu_);
  std::function<void(const std::string&)> hook_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, FileState> files_ ABSL_GUARDED_BY(mu_);        // files written through us
  std::map<std::string, std::vector<DirOp>> journal_ ABSL_GUARDED_BY(mu_);  // by directory, since its last fsync
};

}  // namespace ember::testing

#endif  // EMBER_BASE_TESTING_FAULT_INJECTION_FILE_SYSTEM_H_
