// File: base/directory_lock.h
//
// DirectoryLock: one process at a time owns a directory (a run's output directory), for as long
// as it holds the lock. It is an exclusive flock(2) on DIR/.ember.lock, so the kernel releases it
// when the holder exits in any way, a crash and kill -9 included: a lock left behind by a dead
// process is never in force (the file stays; the lock is gone), which is how a stale lock is
// detected. The file records the holder (host, pid, start time) for the error a second process
// gets. Acquire waits up to `wait` for the holder to go away (a job killed by its scheduler whose
// ranks are still winding down), then fails with FAILED_PRECONDITION naming the holder.
//
// Limits: flock is advisory (only cooperating processes see it), and on network file systems it
// is only as good as the file system's lock support (local-only on some NFS setups).
//
// Thread safety: a DirectoryLock is owned by one thread; the lock is released by the destructor.
#ifndef EMBER_BASE_DIRECTORY_LOCK_H_
#define EMBER_BASE_DIRECTORY_LOCK_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ember {

class DirectoryLock {
 public:
  static constexpr char kLockName[] = ".ember.lock";

  // `dir` must exist. Polls every 100 ms until `wait` has passed.
  static absl::StatusOr<std::unique_ptr<DirectoryLock>> Acquire(const std::string& dir,
                                                                absl::Duration wait = absl::ZeroDuration());
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

  const std::string& path() const { return path_; }

 private:
  DirectoryLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

}  // namespace ember

#endif  // EMBER_BASE_DIRECTORY_LOCK_H_
