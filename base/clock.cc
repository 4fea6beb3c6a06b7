#include "base/clock.h"

#include <chrono>

namespace ember {
namespace {

class SteadyClock final : public Clock {
 public:
  double NowSeconds() const override {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace

Clock* RealClock() {
  static SteadyClock* const clock = new SteadyClock();
  return clock;
}

}  // namespace ember
