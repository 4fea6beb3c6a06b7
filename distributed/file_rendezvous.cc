#include "distributed/file_rendezvous.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace ember::dist {
namespace {

constexpr char kMagic[] = "EMBERRDV1\n";

// The whole file, or nullopt when it cannot be read (absent, or being replaced).
bool ReadWhole(const std::string& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->clear();
  char buf[4096];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out->append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return true;
}

// The payload if `content` is a complete rendezvous file of `run_id`; else why not.
bool Parse(const std::string& content, const std::string& run_id, std::string* payload,
           std::string* why) {
  const size_t magic = std::strlen(kMagic);
  if (content.compare(0, magic, kMagic) != 0) {
    *why = "not an Ember rendezvous file";
    return false;
  }
  const size_t id_end = content.find('\n', magic);
  const size_t size_end = id_end == std::string::npos ? id_end : content.find('\n', id_end + 1);
  if (size_end == std::string::npos) {
    *why = "truncated header";
    return false;
  }
  const std::string id = content.substr(magic, id_end - magic);
  if (id != run_id) {
    *why = absl::StrCat("stale: written for run '", id, "', this run is '", run_id, "'");
    return false;
  }
  size_t size = 0;
  if (!absl::SimpleAtoi(content.substr(id_end + 1, size_end - id_end - 1), &size) ||
      content.size() - size_end - 1 != size) {
    *why = "payload size does not match the header";
    return false;
  }
  *payload = content.substr(size_end + 1);
  return true;
}

}  // namespace

absl::StatusOr<std::string> ShareThroughFile(int rank, const std::string& path,
                                             const std::string& run_id, const std::string& payload,
                                             absl::Time deadline) {
  if (path.empty()) return absl::InvalidArgumentError("file rendezvous: the path is empty");
  if (run_id.empty() || run_id.find('\n') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "file rendezvous: a run id (non-empty, one line) is required so that a file left by an "
        "earlier job is never taken for this one's; got '", run_id, "'"));
  }
  if (rank == 0) {
    const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
    const std::string content = absl::StrCat(kMagic, run_id, "\n", payload.size(), "\n", payload);
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      return absl::UnavailableError(absl::StrCat("file rendezvous: open ", tmp, ": ", std::strerror(errno)));
    }
    const bool written = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
    const int write_errno = errno;
    ::close(fd);
    if (!written || std::rename(tmp.c_str(), path.c_str()) != 0) {
      const int e = written ? errno : write_errno;
      ::unlink(tmp.c_str());
      return absl::UnavailableError(absl::StrCat("file rendezvous: cannot publish ", path, ": ", std::strerror(e)));
    }
    return payload;
  }
  std::string last_seen = "no file";
  while (true) {
    std::string content, out, why;
    if (ReadWhole(path, &content)) {
      if (Parse(content, run_id, &out, &why)) return out;
      last_seen = why;
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "file rendezvous: rank 0 of run '", run_id, "' did not publish ", path, " in time (last seen: ",
          last_seen, ")"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace ember::dist
