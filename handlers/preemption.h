// File: handlers/preemption.h
//
// Preemption: a scheduler's stop signal on any rank stops every rank at the same iteration. It
// installs handlers for SIGTERM (Slurm, Kubernetes, torchrun), SIGINT (Ctrl-C) and SIGUSR1
// (Slurm's --signal=USR1@N before the time limit); a second signal exits the process at once
// (status 1). Attached to ITERATION_COMPLETED it is a SynchronizedHandler: whether any rank saw a
// signal rides the iteration's agreement (kAnyNonZero), so every rank terminates the run at the
// same iteration with outcome().terminated_by == "Preemption". Save a checkpoint afterwards (the
// run's outcome says why it stopped).
//
// The signal state is process-wide (a signal handler can only set a flag); construct one
// Preemption per process. Thread safety: the flag is atomic; the handler runs on the engine's thread.
//
// Example:
//   ember::Preemption preemption;  // installs the signal handlers
//   trainer.On(ember::Events::IterationCompleted(), preemption);
//   ...trainer.Run(...);
//   if (trainer.outcome().terminated_by == ember::Preemption::kName) { save, exit 0 }
#ifndef EMBER_HANDLERS_PREEMPTION_H_
#define EMBER_HANDLERS_PREEMPTION_H_

#include "absl/status/status.h"
#include "engine/engine.h"

namespace ember {

class Preemption final : public SynchronizedHandler {
 public:
  static constexpr char kName[] = "Preemption";

  Preemption();  // installs the signal handlers

  size_t num_values() const override { return 1; }
  dist::Reduction reduction(size_t) const override { return dist::Reduction::kAnyNonZero; }
  absl::Status Propose(Engine& engine, absl::Span<double> values) override;
  absl::Status Decide(Engine& engine, const Agreement& agreement) override;

  // Whether a signal arrived in this process (any rank's is known after the agreement).
  static bool signalled();
  // As if a signal had arrived (for tests, and for programs with their own stop condition);
  // Clear() forgets it.
  static void Request();
  static void Clear();

  // Whether the agreement decided to stop (on every rank alike).
  bool preempted() const { return preempted_; }

 private:
  bool preempted_ = false;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_PREEMPTION_H_
