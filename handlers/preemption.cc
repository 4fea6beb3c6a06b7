#include "handlers/preemption.h"

#include <signal.h>
#include <unistd.h>

#include <time.h>

#include <atomic>
#include <cstdint>
#include <optional>

#include "absl/time/clock.h"

namespace ember {
namespace {

std::atomic<int> g_signals{0};
std::atomic<int64_t> g_signal_ns{0};  // CLOCK_REALTIME of the first signal
std::atomic<int> g_first_signal{0};   // its number (0: Request())
std::atomic<int64_t> g_first_mono_ns{0};

int64_t Nanos(clockid_t clock) {
  struct timespec now;
  ::clock_gettime(clock, &now);  // async-signal-safe
  return int64_t{now.tv_sec} * 1000000000 + now.tv_nsec;
}

void OnSignal(int sig) {
  if (g_signals.load() == 0) {
    g_signal_ns.store(Nanos(CLOCK_REALTIME));
    g_first_mono_ns.store(Nanos(CLOCK_MONOTONIC));
    g_first_signal.store(sig);
  } else if (sig == g_first_signal.load() &&
             Nanos(CLOCK_MONOTONIC) - g_first_mono_ns.load() < absl::ToInt64Nanoseconds(Preemption::kRepeatWindow)) {
    // The same signal again, right after: a launcher chain forwarding one request (slurmstepd
    // and torchrun both signal the worker), not a second request.
    static const char kMsg[] = "stop signal repeated (the same request): still stopping at the next iteration\n";
    (void)!::write(2, kMsg, sizeof(kMsg) - 1);
    return;
  }
  if (g_signals.fetch_add(1) >= 1) {
    static const char kMsg[] = "second stop signal: exiting now\n";
    (void)!::write(2, kMsg, sizeof(kMsg) - 1);
    ::_exit(1);
  }
}

}  // namespace

Preemption::Preemption() {
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) ::sigaction(sig, &action, nullptr);
}

absl::Status Preemption::Propose(Engine&, absl::Span<double> values) {
  previous_check_ = current_check_;
  current_check_ = absl::Now();
  values[0] = signalled() ? 1.0 : 0.0;
  return absl::OkStatus();
}

absl::Status Preemption::Decide(Engine& engine, const Agreement& agreement) {
  if (agreement.value(0) != 0 && !preempted_) {
    preempted_ = true;
    const std::optional<absl::Time> since = previous_check_;
    auto stop = [this, since](Engine& e) {
      if (since) stop_window_ = absl::Now() - *since;
      e.TerminateBy(kName);
    };
    const State& st = engine.state();
    const bool last_of_epoch = st.epoch_length && *st.epoch_length > 0 && st.iteration % *st.epoch_length == 0;
    if (last_of_epoch) {
      // After every EPOCH_COMPLETED handler registered so far (added last, it runs last).
      at_epoch_end_ = engine.On(Events::EpochCompleted(), [this, stop](Engine& e) {
        at_epoch_end_.Remove();
        stop(e);
      });
    } else {
      stop(engine);
    }
  }
  return absl::OkStatus();
}

bool Preemption::signalled() { return g_signals.load() > 0; }
void Preemption::Request() {
  g_signal_ns.store(absl::ToUnixNanos(absl::Now()));
  g_first_signal.store(0);
  g_signals.store(1);
}
void Preemption::Clear() {
  g_signals.store(0);
  g_signal_ns.store(0);
  g_first_signal.store(0);
  g_first_mono_ns.store(0);
}
std::optional<absl::Time> Preemption::signal_time() {
  const int64_t ns = g_signal_ns.load();
  if (g_signals.load() == 0 || ns == 0) return std::nullopt;
  return absl::FromUnixNanos(ns);
}

}  // namespace ember
