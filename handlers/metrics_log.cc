#include "handlers/metrics_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/atomic_file.h"
#include "base/status_macros.h"

namespace ember {

absl::StatusOr<std::unique_ptr<MetricsLog>> MetricsLog::Open(std::string path, FileSystem* fs) {
  std::unique_ptr<MetricsLog> log(new MetricsLog(std::move(path), fs ? fs : FileSystem::Default()));
  EMBER_RETURN_IF_ERROR(log->Reopen());
  return log;
}

absl::Status MetricsLog::Reopen() {
  out_.close();
  out_.clear();
  out_.open(path_, std::ios::app);
  if (!out_) return ErrnoStatus(errno, "open", path_);
  return absl::OkStatus();
}

std::string MetricsLog::Format(const nlohmann::ordered_json& line) {
  auto scalar = [](const nlohmann::ordered_json& v) {
    if (v.is_number_float() && std::isfinite(v.get<double>())) return absl::StrFormat("%.9g", v.get<double>());
    return v.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  };
  if (!line.is_object()) return scalar(line);
  std::string out = "{";
  for (auto it = line.begin(); it != line.end(); ++it) {
    absl::StrAppend(&out, it == line.begin() ? "" : ", ", scalar(nlohmann::ordered_json(it.key())), ": ",
                    scalar(it.value()));
  }
  return out + "}";
}

absl::Status MetricsLog::Append(const nlohmann::ordered_json& line) {
  out_ << Format(line) << "\n";
  out_.flush();
  if (!out_) return ErrnoStatus(errno, "write", path_);
  // Durable before it returns (a line per epoch: one fsync each), as durable as the checkpoint it
  // describes. The stream has no descriptor to give: fsync through another one of the same file.
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open", path_);
  const int synced = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (synced != 0) return ErrnoStatus(error, "fsync", path_);
  return absl::OkStatus();
}

absl::StatusOr<int> MetricsLog::ResumeAt(int64_t iteration) {
  out_.close();
  std::string text;
  if (fs_->Exists(path_)) {
    EMBER_ASSIGN_OR_RETURN(text, fs_->ReadFile(path_));
  }
  std::string kept;
  int dropped = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    nlohmann::json parsed = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    const bool keep = parsed.is_object() && parsed.contains("iteration") && parsed["iteration"].is_number_integer() &&
                      parsed["iteration"].get<int64_t>() <= iteration;
    if (keep) {
      absl::StrAppend(&kept, line, "\n");
    } else {
      ++dropped;
    }
  }
  if (dropped > 0) {
    EMBER_RETURN_IF_ERROR(WriteFileAtomically(fs_, path_, [&](const AppendFn& append) {
      return append(kept.data(), kept.size());
    }));
  }
  EMBER_RETURN_IF_ERROR(Reopen());
  return dropped;
}

}  // namespace ember
