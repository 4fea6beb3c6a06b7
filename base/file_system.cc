#include "base/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/large_buffer.h"

namespace ember {

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

absl::Status ErrnoStatus(int error, const std::string& call, const std::string& path) {
  const std::string message = absl::StrCat(call, " ", path, ": ", std::strerror(error));
  switch (error) {
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    case ENOENT:
      return absl::NotFoundError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case EIO:
      return absl::DataLossError(message);
    default:
      return absl::InternalError(message);
  }
}

namespace {

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  absl::Status Append(const void* data, size_t size) override {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      ssize_t n = ::write(fd_, p, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, "write", path_);
      }
      p += n;
      size -= static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }
  absl::Status Sync() override {
    if (::fsync(fd_) != 0) return ErrnoStatus(errno, "fsync", path_);
    return absl::OkStatus();
  }
  absl::Status Close() override {
    if (fd_ < 0) return absl::OkStatus();
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) return ErrnoStatus(errno, "close", path_);
    return absl::OkStatus();
  }
  const std::string& path() const override { return path_; }

 private:
  int fd_;
  std::string path_;
};

// What a file that is not a regular file is, for messages.
const char* FileKind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISDIR(mode)) return "a directory";
  return "of an unknown kind";
}

// The last min(max_bytes, size) bytes of the regular file `path` (all of it for SIZE_MAX), read
// with pread from the size it had when opened (a file that grows meanwhile cannot make this
// unbounded; one that shrinks gives what is there).
// exact: a short read (the file shrank while it was read) is an error (kAborted, naming the file),
// never taken for the file's last bytes: a tail read that came up short would not be the tail.
absl::StatusOr<std::string> ReadEnd(const std::string& path, size_t max_bytes, uint64_t* file_size,
                                    bool exact = false) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below); it changes
  // nothing for a regular file.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoStatus(errno, "open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return ErrnoStatus(e, "fstat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrCat("read ", path, ": not a regular file (", FileKind(st.st_mode),
                                                      "); only regular files are read"));
  }
  const uint64_t total = static_cast<uint64_t>(st.st_size);
  if (file_size != nullptr) *file_size = total;
  const size_t size = static_cast<size_t>(std::min<uint64_t>(total, max_bytes));
  const off_t start = static_cast<off_t>(total - size);
  std::string out;
  ResizeLargeBuffer(out, size);  // a checkpoint of many MiB: 2 MiB pages, far fewer faults
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::pread(fd, out.data() + got, size - got, start + static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return ErrnoStatus(e, "read", path);
    }
    if (n == 0) break;  // shrank meanwhile
    got += static_cast<size_t>(n);
  }
  if (exact && got < size) {
    ::close(fd);
    return absl::AbortedError(absl::StrCat("read ", path, ": the file shrank while it was read (", got, " of ",
                                           size, " bytes of its last ", size, " read); not used"));
  }
  out.resize(got);
  ::close(fd);
  return out;
}

class PosixFileSystem final : public FileSystem {
 public:
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus(errno, "open", path);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(fd, path));
  }
  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    return ReadEnd(path, std::numeric_limits<size_t>::max(), nullptr);
  }
  absl::StatusOr<std::string> ReadFileTail(const std::string& path, size_t max_bytes,
                                           uint64_t* file_size) override {
    return ReadEnd(path, max_bytes, file_size, /*exact=*/true);
  }
  absl::Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoStatus(errno, "rename", absl::StrCat(from, " -> ", to));
    }
    return absl::OkStatus();
  }
  absl::Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoStatus(errno, "unlink", path);
    return absl::OkStatus();
  }
  absl::Status SyncDir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, "open", dir);
    int rc = ::fsync(fd);
    int e = errno;
    ::close(fd);
    if (rc != 0) return ErrnoStatus(e, "fsync", dir);
    return absl::OkStatus();
  }
  absl::Status CreateDir(const std::string& dir) override {
    if (::mkdir(dir.c_str(), 0755) != 0) return ErrnoStatus(errno, "mkdir", dir);
    return absl::OkStatus();
  }
  absl::Status RemoveDir(const std::string& dir) override {
    if (::rmdir(dir.c_str()) != 0) return ErrnoStatus(errno, "rmdir", dir);
    return absl::OkStatus();
  }
  bool IsWritableDirectory(const std::string& dir) override {
    return IsDirectory(dir) && ::access(dir.c_str(), W_OK | X_OK) == 0;
  }
  absl::StatusOr<std::string> AbsolutePath(const std::string& path) override {
    if (!path.empty() && path[0] == '/') return path;
    char cwd[4096];
    if (::getcwd(cwd, sizeof(cwd)) == nullptr) return ErrnoStatus(errno, "getcwd", path);
    return JoinPath(cwd, path);
  }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, "opendir", dir);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
    return names;
  }
  bool Exists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }
  bool IsDirectory(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }
  absl::StatusOr<uint64_t> FileSize(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "stat", path);
    return static_cast<uint64_t>(st.st_size);
  }
  absl::Status Chmod(const std::string& path, unsigned mode) override {
    if (::chmod(path.c_str(), mode) != 0) return ErrnoStatus(errno, "chmod", path);
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<std::string> FileSystem::ReadFileTail(const std::string& path, size_t max_bytes,
                                                     uint64_t* file_size) {
  absl::StatusOr<std::string> all = ReadFile(path);
  if (!all.ok()) return all.status();
  if (file_size != nullptr) *file_size = all->size();
  if (all->size() > max_bytes) all->erase(0, all->size() - max_bytes);
  return all;
}

absl::Status FileSystem::CreateDirs(const std::string& dir) {
  if (dir.empty() || IsDirectory(dir)) return absl::OkStatus();
  const std::string parent = DirName(dir);
  if (parent != dir && parent != "." && parent != "/") {
    if (absl::Status s = CreateDirs(parent); !s.ok()) return s;
  }
  if (absl::Status s = CreateDir(dir); !s.ok()) {
    if (IsDirectory(dir)) return absl::OkStatus();  // created by someone else meanwhile
    return s;
  }
  // The new entry lives in the parent: make it durable there.
  return SyncDir(parent == "." ? std::string(".") : parent);
}

FileSystem* FileSystem::Default() {
  static FileSystem* const fs = new PosixFileSystem();
  return fs;
}

}  // namespace ember
