#include "base/directory_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "base/file_system.h"

namespace ember {

absl::StatusOr<std::unique_ptr<DirectoryLock>> DirectoryLock::Acquire(const std::string& dir,
                                                                      absl::Duration wait) {
  const std::string path = JoinPath(dir, kLockName);
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, "open", path);
  const absl::Time give_up = absl::Now() + wait;
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    if (error == EINTR) continue;
    if (error != EWOULDBLOCK || absl::Now() >= give_up) {
      char holder[256] = {0};
      const ssize_t n = ::pread(fd, holder, sizeof(holder) - 1, 0);
      ::close(fd);
      if (error != EWOULDBLOCK) return ErrnoStatus(error, "flock", path);
      std::string who = n > 0 ? std::string(absl::StripTrailingAsciiWhitespace(std::string(holder, n)))
                              : "a process that has not yet said who it is";
      return absl::FailedPreconditionError(absl::StrCat(
          dir, " is in use by another run (", who, "; lock ", path, ", waited ",
          absl::FormatDuration(wait), ")"));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  char host[256] = "?";
  ::gethostname(host, sizeof(host) - 1);
  const std::string who = absl::StrFormat("pid %d on host %s since %s\n", ::getpid(), host,
                                          absl::FormatTime("%Y-%m-%dT%H:%M:%S%Ez", absl::Now(), absl::LocalTimeZone()));
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, who.data(), who.size(), 0) != static_cast<ssize_t>(who.size())) {
    const int error = errno;
    ::close(fd);
    return ErrnoStatus(error, "write", path);
  }
  return std::unique_ptr<DirectoryLock>(new DirectoryLock(fd, path));
}

DirectoryLock::~DirectoryLock() { ::close(fd_); }  // closing the last descriptor releases the lock

}  // namespace ember
