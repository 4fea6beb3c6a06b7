// File: handlers/timer.h
//
// Timer (ignite's): measures elapsed time, optionally averaged over steps. It starts running at
// construction; Attach registers reset/pause/resume/step on an engine's events. Times come from
// an injectable Clock (base/clock.h) so tests can use a FakeClock. Not thread-safe; local to a
// rank (no collective).
//
//   value() = (total + (elapsed since resume, if running)) / (average ? max(steps, 1) : 1)
//
// Example: average time per iteration, excluding data loading
//   ember::Timer timer(/*average=*/true);
//   EMBER_RETURN_IF_ERROR(timer.Attach(trainer, {.start = ember::Events::EpochStarted(),
//                                                .pause = ember::Events::IterationCompleted(),
//                                                .resume = ember::Events::IterationStarted(),
//                                                .step = ember::Events::IterationCompleted()}));
// TimerEvents' fields are in the order of ignite's attach(engine, start, pause, resume, step).
#ifndef EMBER_HANDLERS_TIMER_H_
#define EMBER_HANDLERS_TIMER_H_

#include <optional>

#include "absl/status/status.h"
#include "base/clock.h"
#include "engine/engine.h"

namespace ember {

struct TimerEvents {
  EventSpec start = Events::Started();
  EventSpec pause = Events::Completed();
  std::optional<EventSpec> resume;
  std::optional<EventSpec> step;
};

class Timer {
 public:
  explicit Timer(bool average = false, Clock* clock = RealClock());

  // Registers reset (at start), pause, resume and step, in that order (as ignite).
  absl::Status Attach(Engine& engine, const TimerEvents& events = {});

  void Reset();
  void Pause();
  void Resume();
  void Step() { step_count_ += 1.0; }
  double value() const;

  double total() const { return total_; }
  double step_count() const { return step_count_; }
  bool running() const { return running_; }

 private:
  bool average_;
  Clock* clock_;
  double total_ = 0;
  double step_count_ = 0;
  bool running_ = true;
  double t0_ = 0;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_TIMER_H_
