// File: base/log.h
//
// The library's one log seam. Every warning Ember's libraries write (a corrupt checkpoint moved
// aside, a background save that failed, a non-finite loss, a data source that ran dry, ...) goes
// through LogWarning(), and from there to one process-wide sink: stderr by default, or the
// function a program installs with SetLogSink() to route them into its own logging.
//
// Contract:
//   - Thread-safe. Calls of the sink are serialized (one at a time, under a mutex), so a sink
//     needs no locking of its own; once SetLogSink() returns, the previous sink is never called
//     again. A sink must not call Log()/LogWarning() (it would deadlock) and should return soon:
//     the thread that logs (a training thread, a checkpoint writer) waits for it.
//   - The default sink writes one line, "[ember] WARNING: " + message, to stderr (INFO: "[ember] ",
//     ERROR: "[ember] ERROR: ").
//   - Messages name their source ("DiskSaver: ...", "Checkpoint: ...") and carry no newline.
//   - An Engine's own set_warning_handler() (engine/engine.h) stays a per-engine override; an
//     engine without one logs its warnings here.
//   - Two kinds of message go straight to stderr, not through the sink: fatal ones written just
//     before the process aborts (a programming error such as a Value read as the wrong kind), and
//     those of a signal handler (Preemption's "signal received"), which may not take a mutex.
//
// Example:
//   ember::SetLogSink([](ember::LogSeverity severity, std::string_view message) {
//     LOG(WARNING) << message;   // glog, spdlog, a Python logger, ...
//   });
//   ...
//   ember::SetLogSink(nullptr);  // back to stderr
#ifndef EMBER_BASE_LOG_H_
#define EMBER_BASE_LOG_H_

#include <functional>
#include <string_view>
#include <utility>

namespace ember {

enum class LogSeverity { kInfo, kWarning, kError };

// "INFO", "WARNING", "ERROR".
const char* LogSeverityName(LogSeverity severity);

using LogSink = std::function<void(LogSeverity severity, std::string_view message)>;

// Installs `sink` as the process-wide sink (nullptr: the default, stderr) and returns the one it
// replaces (nullptr if that was the default).
LogSink SetLogSink(LogSink sink);

// Passes `message` to the sink.
void Log(LogSeverity severity, std::string_view message);
inline void LogWarning(std::string_view message) { Log(LogSeverity::kWarning, message); }

// Installs a sink for its lifetime and puts the previous one back when destroyed (tests).
class ScopedLogSink {
 public:
  explicit ScopedLogSink(LogSink sink) : previous_(SetLogSink(std::move(sink))) {}
  ~ScopedLogSink() { SetLogSink(std::move(previous_)); }
  ScopedLogSink(const ScopedLogSink&) = delete;
  ScopedLogSink& operator=(const ScopedLogSink&) = delete;

 private:
  LogSink previous_;
};

}  // namespace ember

#endif  // EMBER_BASE_LOG_H_
