// File: base/file_system.h
//
// FileSystem: every file-system effect Ember's checkpointing has, behind one interface (as
// leveldb's Env), so that tests can fail any step (ENOSPC, EIO) or simulate a crash that drops
// what was not made durable (testing/fault_injection_file_system.h). Errors are Status values
// whose message names the path and the failed call, e.g.
//   "RESOURCE_EXHAUSTED: write /ckpt/model_3.pt.tmp: No space left on device".
//
// Thread safety: implementations are safe for concurrent use from several threads (the
// asynchronous checkpoint writer uses one while the training thread lists a directory).
// A WritableFile is used by one thread at a time.
#ifndef EMBER_BASE_FILE_SYSTEM_H_
#define EMBER_BASE_FILE_SYSTEM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ember {

class WritableFile {
 public:
  virtual ~WritableFile() = default;
  virtual absl::Status Append(const void* data, size_t size) = 0;
  // Makes everything appended so far durable (fsync).
  virtual absl::Status Sync() = 0;
  virtual absl::Status Close() = 0;
  virtual const std::string& path() const = 0;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // The process-wide POSIX file system (never null, never destroyed).
  static FileSystem* Default();

  // Creates a new file (truncating an existing one) for writing.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) = 0;
  // The whole content of a regular file, read up to the size it had when opened (so a growing
  // file cannot make it unbounded). Anything else (a FIFO, a device such as /dev/zero, a socket,
  // a directory) is refused at once with kFailedPrecondition naming it and what it is, never
  // waited on (a FIFO is opened without blocking).
  virtual absl::StatusOr<std::string> ReadFile(const std::string& path) = 0;
  // The last min(max_bytes, size) bytes of a regular file, and (in `*file_size`) its size when
  // opened: one open, fstat and pread, so that a reader of a file's trailer (a zip's central
  // directory) does not read its body. Refuses what ReadFile refuses. The default reads the whole
  // file through ReadFile and keeps its end (for fakes; the POSIX file system reads only the end).
  // A read that comes up short (the file shrank while it was read) is an error (kAborted, naming
  // the file), never returned as the file's end.
  virtual absl::StatusOr<std::string> ReadFileTail(const std::string& path, size_t max_bytes,
                                                   uint64_t* file_size);
  // Atomically replaces `to` with `from` (rename(2)).
  virtual absl::Status Rename(const std::string& from, const std::string& to) = 0;
  virtual absl::Status RemoveFile(const std::string& path) = 0;
  // Makes the directory's entries (creations, renames, removals) durable (fsync of the dir).
  virtual absl::Status SyncDir(const std::string& dir) = 0;
  // Creates one directory (mkdir(2); its parent must exist). Not durable until the parent is
  // synced (SyncDir of the parent).
  virtual absl::Status CreateDir(const std::string& dir) = 0;
  // Removes an empty directory (rmdir(2)); durable once the parent is synced.
  virtual absl::Status RemoveDir(const std::string& dir) = 0;
  // Creates `dir` and its missing parents, durably: each new directory's parent is synced, so
  // that a power loss cannot take the directory (and every checkpoint in it) away.
  absl::Status CreateDirs(const std::string& dir);
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) = 0;  // names
  virtual bool Exists(const std::string& path) = 0;
  virtual bool IsDirectory(const std::string& path) = 0;
  virtual absl::StatusOr<uint64_t> FileSize(const std::string& path) = 0;
  virtual absl::Status Chmod(const std::string& path, unsigned mode) = 0;
  // Whether this process may create and remove entries in `dir` (access(2) W_OK|X_OK).
  virtual bool IsWritableDirectory(const std::string& dir) = 0;
  // `path` made absolute against the current directory (getcwd(3)).
  virtual absl::StatusOr<std::string> AbsolutePath(const std::string& path) = 0;
};

// Forwards every call to another FileSystem; subclasses override what they change.
class FileSystemWrapper : public FileSystem {
 public:
  explicit FileSystemWrapper(FileSystem* target) : target_(target) {}
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& p) override {
    return target_->NewWritableFile(p);
  }
  absl::StatusOr<std::string> ReadFile(const std::string& p) override { return target_->ReadFile(p); }
  absl::StatusOr<std::string> ReadFileTail(const std::string& p, size_t max_bytes, uint64_t* file_size) override {
    return target_->ReadFileTail(p, max_bytes, file_size);
  }
  absl::Status Rename(const std::string& f, const std::string& t) override { return target_->Rename(f, t); }
  absl::Status RemoveFile(const std::string& p) override { return target_->RemoveFile(p); }
  absl::Status SyncDir(const std::string& d) override { return target_->SyncDir(d); }
  absl::Status CreateDir(const std::string& d) override { return target_->CreateDir(d); }
  absl::Status RemoveDir(const std::string& d) override { return target_->RemoveDir(d); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& d) override {
    return target_->ListDir(d);
  }
  bool Exists(const std::string& p) override { return target_->Exists(p); }
  bool IsDirectory(const std::string& p) override { return target_->IsDirectory(p); }
  absl::StatusOr<uint64_t> FileSize(const std::string& p) override { return target_->FileSize(p); }
  absl::Status Chmod(const std::string& p, unsigned mode) override { return target_->Chmod(p, mode); }
  bool IsWritableDirectory(const std::string& d) override { return target_->IsWritableDirectory(d); }
  absl::StatusOr<std::string> AbsolutePath(const std::string& p) override {
    return target_->AbsolutePath(p);
  }

 protected:
  FileSystem* target() const { return target_; }

 private:
  FileSystem* target_;
};

// "dir/name" joining, and the directory part of a path ("." when there is none).
std::string JoinPath(const std::string& dir, const std::string& name);
std::string DirName(const std::string& path);
std::string BaseName(const std::string& path);

// An errno turned into a Status naming the call and the path (ENOSPC -> kResourceExhausted,
// ENOENT -> kNotFound, EACCES/EPERM/EROFS -> kPermissionDenied, else kInternal... as fits).
absl::Status ErrnoStatus(int error, const std::string& call, const std::string& path);

}  // namespace ember

#endif  // EMBER_BASE_FILE_SYSTEM_H_
