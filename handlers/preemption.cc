#include "handlers/preemption.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>

namespace ember {
namespace {

std::atomic<int> g_signals{0};

void OnSignal(int) {
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
  values[0] = signalled() ? 1.0 : 0.0;
  return absl::OkStatus();
}

absl::Status Preemption::Decide(Engine& engine, const Agreement& agreement) {
  if (agreement.value(0) != 0 && !preempted_) {
    preempted_ = true;
    engine.TerminateBy(kName);
  }
  return absl::OkStatus();
}

bool Preemption::signalled() { return g_signals.load() > 0; }
void Preemption::Request() { g_signals.store(1); }
void Preemption::Clear() { g_signals.store(0); }

}  // namespace ember
