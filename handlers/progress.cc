#include "handlers/progress.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace ember {

absl::StatusOr<Progress::Mode> Progress::ParseMode(absl::string_view text) {
  if (text == "auto") return Mode::kAuto;
  if (text == "bar") return Mode::kBar;
  if (text == "lines") return Mode::kLines;
  if (text == "none") return Mode::kNone;
  return absl::InvalidArgumentError(absl::StrCat("progress mode '", text, "': allowed: auto, bar, lines, none"));
}

absl::Status Progress::Attach(Engine& engine) {
  if (options_.out == nullptr) return absl::InvalidArgumentError("Progress: out is null");
  if (options_.bar_width < 1) {
    return absl::InvalidArgumentError(absl::StrCat("Progress: bar_width must be >= 1, got ", options_.bar_width));
  }
  displays_ = engine.communicator().rank() == options_.rank;
  mode_ = options_.mode;
  if (mode_ == Mode::kAuto) mode_ = ::isatty(::fileno(options_.out)) ? Mode::kBar : Mode::kLines;
  engine.On(Events::EpochStarted(), [this] {
    output_sum_ = 0;
    steps_ = 0;
  });
  engine.On(Events::IterationCompleted(), [this](Engine& e) {
    if (const double* v = e.state().output_as<double>()) output_sum_ += *v;
    ++steps_;
    if (displays_ && mode_ != Mode::kNone) Show(e);
  });
  engine.On(Events::EpochCompleted(), [this] {
    if (bar_open_) {
      std::fputc('\n', options_.out);
      bar_open_ = false;
    }
  });
  return absl::OkStatus();
}

void Progress::Show(const Engine& e) {
  const State& s = e.state();
  const int64_t len = s.epoch_length.value_or(0);
  const int64_t in_epoch = len > 0 ? (s.iteration - 1) % len + 1 : s.iteration;
  const std::string epochs = s.max_epochs ? absl::StrCat(s.epoch, "/", *s.max_epochs) : absl::StrCat(s.epoch);
  const std::string of = len > 0 ? absl::StrCat(in_epoch, "/", len) : absl::StrCat(in_epoch);
  if (mode_ == Mode::kBar) {
    const int filled = len > 0 ? static_cast<int>(options_.bar_width * in_epoch / len) : 0;
    std::fprintf(options_.out, "\repoch %s [%s%s] %s loss %.4f", epochs.c_str(), std::string(filled, '#').c_str(),
                 std::string(options_.bar_width - filled, '.').c_str(), of.c_str(), epoch_mean_output());
    std::fflush(options_.out);
    bar_open_ = true;
    return;
  }
  const absl::Time now = absl::Now();
  if (now - last_line_ < options_.line_interval && in_epoch != len) return;
  last_line_ = now;
  std::fprintf(options_.out, "epoch %s iteration %s loss %.4f\n", epochs.c_str(), of.c_str(), epoch_mean_output());
  std::fflush(options_.out);
}

void Progress::Line(const std::string& line) {
  if (!displays_) return;
  if (bar_open_) {
    std::fputc('\n', options_.out);
    bar_open_ = false;
  }
  std::fprintf(options_.out, "%s\n", line.c_str());
  std::fflush(options_.out);
}

}  // namespace ember
