#include "distributed/file_rendezvous.h"

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/atomic_file.h"
#include "base/file_system.h"

namespace ember::dist {
namespace {

constexpr char kMagic[] = "EMBERRDV1\n";

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
  FileSystem* fs = FileSystem::Default();
  if (rank == 0) {
    // Temporary file, fsync, rename: a reader never sees half a file.
    const std::string content = absl::StrCat(kMagic, run_id, "\n", payload.size(), "\n", payload);
    absl::Status published = WriteFileAtomically(
        fs, path, [&](const AppendFn& append) { return append(content.data(), content.size()); });
    if (!published.ok()) {
      return absl::UnavailableError(absl::StrCat("file rendezvous: cannot publish ", path, ": ", published.message()));
    }
    return payload;
  }
  std::string last_seen = "no file";
  while (true) {
    std::string out, why;
    if (absl::StatusOr<std::string> content = fs->ReadFile(path); content.ok()) {
      if (Parse(*content, run_id, &out, &why)) return out;
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
