// File: handlers/metrics_log.h
//
// MetricsLog: a run's JSON-lines log (one object per line, e.g. one per epoch with "epoch" and
// "iteration"), written by one rank. Append writes a line, its keys in the order given and
// floating-point numbers with 9 significant digits (`{"epoch": 1, "val_loss": 0.263115943}`), and
// flushes it to the OS, so a reader (a dashboard, `tail -f`) sees each line as it is written, and
// fsyncs it: a line is durable when Append returns, as the checkpoint it describes is (one fsync
// per line; the trainer writes one line per epoch).
//
// Resume: the log must read as one run. ResumeAt(iteration) rewrites it atomically (a crash leaves
// the old or the new log, never a torn one) keeping only the lines of iterations at or before the
// checkpoint the run resumed from: the lines of a future that was abandoned (a resume from an older
// checkpoint) and a torn last line (a crash while appending) are dropped, and the number dropped
// is returned. ResumeAt(0) (a fresh start) empties it.
//
// Thread safety: not thread-safe; one writer.
#ifndef EMBER_HANDLERS_METRICS_LOG_H_
#define EMBER_HANDLERS_METRICS_LOG_H_

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "base/file_system.h"
#include "nlohmann/json.hpp"

namespace ember {

class MetricsLog {
 public:
  // Opens `path` for appending (created if absent). `fs` (default FileSystem::Default()) is used
  // for ResumeAt's rewrite.
  static absl::StatusOr<std::unique_ptr<MetricsLog>> Open(std::string path, FileSystem* fs = nullptr);

  absl::Status Append(const nlohmann::ordered_json& line);
  // The line Append writes (without the newline).
  static std::string Format(const nlohmann::ordered_json& line);
  // Keeps the lines whose "iteration" is <= `iteration`; returns how many were dropped.
  absl::StatusOr<int> ResumeAt(int64_t iteration);

  const std::string& path() const { return path_; }

 private:
  MetricsLog(std::string path, FileSystem* fs) : path_(std::move(path)), fs_(fs) {}
  absl::Status Reopen();
  std::string path_;
  FileSystem* fs_;
  std::ofstream out_;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_METRICS_LOG_H_
