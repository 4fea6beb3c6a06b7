// File: base/clock.h
//
// Clock: a monotonic time source in seconds, injectable so that Timer, deadlines and
// throughput figures can be tested with a fake. RealClock reads CLOCK_MONOTONIC through
// std::chrono::steady_clock; it is stateless and safe to share between threads.
// FakeClock (testing) only moves when told to; it is not thread-safe.
//
// Example:
//   ember::Clock* clock = ember::RealClock();
//   double t0 = clock->NowSeconds();
//   ...
//   double elapsed = clock->NowSeconds() - t0;
#ifndef EMBER_BASE_CLOCK_H_
#define EMBER_BASE_CLOCK_H_

namespace ember {

class Clock {
 public:
  virtual ~Clock() = default;
  // Seconds since an arbitrary fixed origin; never decreases.
  virtual double NowSeconds() const = 0;
};

// The process-wide real monotonic clock (never null, never destroyed).
Clock* RealClock();

// A manually advanced clock for tests.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(double start_seconds = 0.0) : now_(start_seconds) {}
  double NowSeconds() const override { return now_; }
  void Advance(double seconds) { now_ += seconds; }
  void Set(double seconds) { now_ = seconds; }

 private:
  double now_;
};

}  // namespace ember

#endif  // EMBER_BASE_CLOCK_H_
