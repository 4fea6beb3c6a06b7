// File: handlers/progress.h
//
// Progress (ignite's contrib ProgressBar, for terminals and for logs): on one rank (rank 0 of the
// engine's communicator by default), shows the epoch, the iteration within it and the running
// mean of the step's output (the loss, when the step returns a double):
//   bar    "\repoch 2/10 [#########.....] 300/469 loss 0.4123", redrawn in place;
//   lines  "epoch 2/10 iteration 300/469 loss 0.4123", at most one line per `line_interval` and
//          at the end of each epoch (for logs and pipes);
//   none   nothing; auto: bar when the output is a terminal, else lines.
// Every rank keeps the running mean (epoch_mean_output(), reset at EPOCH_STARTED), so a metrics
// line can use it. Line() prints a line of your own on the display's rank, ending a bar first.
//
// Attach registers handlers on the engine (it must outlive them). Not thread-safe.
//
// Example:
//   ember::Progress progress({.mode = ember::Progress::Mode::kAuto});
//   EMBER_RETURN_IF_ERROR(progress.Attach(trainer));
#ifndef EMBER_HANDLERS_PROGRESS_H_
#define EMBER_HANDLERS_PROGRESS_H_

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/engine.h"

namespace ember {

enum class ProgressMode { kAuto, kBar, kLines, kNone };

struct ProgressOptions {
  ProgressMode mode = ProgressMode::kAuto;
  absl::Duration line_interval = absl::Seconds(5);
  std::FILE* out = stderr;
  int rank = 0;  // the rank that displays
  int bar_width = 30;
};

class Progress {
 public:
  using Mode = ProgressMode;
  using Options = ProgressOptions;

  // "auto", "bar", "lines" or "none"; anything else is kInvalidArgument naming it and those.
  static absl::StatusOr<Mode> ParseMode(absl::string_view text);

  explicit Progress(Options options = {}) : options_(options) {}
  absl::Status Attach(Engine& engine);

  double epoch_mean_output() const { return steps_ > 0 ? output_sum_ / steps_ : 0; }
  int64_t epoch_steps() const { return steps_; }
  double epoch_output_sum() const { return output_sum_; }
  // Prints `line` (and a newline) on the displaying rank, ending a bar in progress first.
  void Line(const std::string& line);

 private:
  void Show(const Engine& e);
  Options options_;
  Mode mode_ = Mode::kNone;  // resolved at Attach
  bool displays_ = false;
  bool bar_open_ = false;
  double output_sum_ = 0;
  int64_t steps_ = 0;
  absl::Time last_line_ = absl::InfinitePast();
};

}  // namespace ember

#endif  // EMBER_HANDLERS_PROGRESS_H_
