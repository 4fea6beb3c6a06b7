#include "handlers/timer.h"

#include <algorithm>

#include "base/status_macros.h"

namespace ember {

Timer::Timer(bool average, Clock* clock) : average_(average), clock_(clock) { Reset(); }

void Timer::Reset() {
  total_ = 0;
  step_count_ = 0;
  running_ = true;
  t0_ = clock_->NowSeconds();
}

void Timer::Pause() {
  if (!running_) return;
  total_ += clock_->NowSeconds() - t0_;
  running_ = false;
}

void Timer::Resume() {
  if (running_) return;
  running_ = true;
  t0_ = clock_->NowSeconds();
}

double Timer::value() const {
  double total = total_;
  if (running_) total += clock_->NowSeconds() - t0_;
  const double denominator = average_ ? std::max(step_count_, 1.0) : 1.0;
  return total / denominator;
}

absl::Status Timer::Attach(Engine& engine, const TimerEvents& events) {
  EMBER_RETURN_IF_ERROR(engine.AddEventHandler(events.start, [this] { Reset(); }).status());
  EMBER_RETURN_IF_ERROR(engine.AddEventHandler(events.pause, [this] { Pause(); }).status());
  if (events.resume) {
    EMBER_RETURN_IF_ERROR(engine.AddEventHandler(*events.resume, [this] { Resume(); }).status());
  }
  if (events.step) {
    EMBER_RETURN_IF_ERROR(engine.AddEventHandler(*events.step, [this] { Step(); }).status());
  }
  return absl::OkStatus();
}

}  // namespace ember
