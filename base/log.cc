#include "base/log.h"

#include <cstdio>
#include <string>
#include <utility>

#include "base/mutex.h"

namespace ember {
namespace {

struct SinkSlot {
  Mutex mu;
  LogSink sink ABSL_GUARDED_BY(mu);  // empty: stderr
};

SinkSlot& Slot() {
  static SinkSlot* const slot = new SinkSlot();  // never destroyed: threads may log during exit
  return *slot;
}

}  // namespace

const char* LogSeverityName(LogSeverity severity) {
  switch (severity) {
    case LogSeverity::kInfo:
      return "INFO";
    case LogSeverity::kWarning:
      return "WARNING";
    case LogSeverity::kError:
      return "ERROR";
  }
  return "UNKNOWN";
}

LogSink SetLogSink(LogSink sink) {
  SinkSlot& slot = Slot();
  MutexLock lock(&slot.mu);
  std::swap(slot.sink, sink);
  return sink;
}

void Log(LogSeverity severity, std::string_view message) {
  SinkSlot& slot = Slot();
  MutexLock lock(&slot.mu);
  if (slot.sink) {
    slot.sink(severity, message);
    return;
  }
  const std::string prefix =
      severity == LogSeverity::kInfo ? "[ember] " : std::string("[ember] ") + LogSeverityName(severity) + ": ";
  std::fprintf(stderr, "%s%.*s\n", prefix.c_str(), static_cast<int>(message.size()), message.data());
}

}  // namespace ember
