// File: handlers/preemption.h
//
// Preemption: a scheduler's stop signal on any rank stops every rank at the same iteration.
// When that iteration is the last of its epoch, the run stops after the epoch's EPOCH_COMPLETED
// handlers (its evaluation and checkpoint) instead: a checkpoint taken then resumes into the next
// epoch exactly as the uninterrupted run continued, where stopping before them would lose that
// epoch's end (ignite's resume starts the next epoch without firing it). It
// installs handlers for SIGTERM (Slurm, Kubernetes, torchrun), SIGINT (Ctrl-C) and SIGUSR1
// (Slurm's --signal=USR1@N before the time limit); a second signal exits the process at once
// (status 1). The same signal again within kRepeatWindow (2 s) of the first is not a second
// request but the first one delivered twice (a launcher chain: slurmstepd and torchrun both
// signal the worker; scancel then Slurm's own TERM): it is said on stderr and changes nothing. A
// different signal, or the same one after the window, is a second request. Attached to ITERATION_COMPLETED it is a SynchronizedHandler: whether any rank saw a
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

#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/engine.h"

namespace ember {

class Preemption final : public SynchronizedHandler {
 public:
  static constexpr char kName[] = "Preemption";
  // A repeat of the first stop signal within this window is the same request (see above).
  static constexpr absl::Duration kRepeatWindow = absl::Seconds(2);

  Preemption();  // installs the signal handlers

  size_t num_values() const override { return 1; }
  dist::Reduction reduction(size_t) const override { return dist::Reduction::kAnyNonZero; }
  absl::Status Propose(Engine& engine, absl::Span<double> values) override;
  absl::Status Decide(Engine& engine, const Agreement& agreement) override;
  // Its proposal reads only the process's signal flag: it can ride the step's collective.
  bool proposes_in_step() const override { return true; }

  // Whether a signal arrived in this process (any rank's is known after the agreement).
  static bool signalled();
  // As if a signal had arrived (for tests, and for programs with their own stop condition);
  // Clear() forgets it.
  static void Request();
  static void Clear();
  // When this process received its first stop signal (or Request()), to measure how long the
  // stop took; nullopt when it received none.
  static std::optional<absl::Time> signal_time();

  // Whether the agreement decided to stop (on every rank alike).
  bool preempted() const { return preempted_; }

  // Once preempted: the time from this rank's previous check (Propose) to the stop,
  // i.e. the longest a signal can have waited to be acted on: one step plus whatever handlers ran
  // between the two checks (an epoch's evaluation, say). The preemption bound for this event is
  // this window plus the save.
  // Empty when the signal came before this Preemption's first check (during start-up: the
  // bound does not cover the time before training began), or when not preempted.
  std::optional<absl::Duration> stop_window() const { return stop_window_; }

 private:
  bool preempted_ = false;
  std::optional<absl::Time> previous_check_, current_check_;
  std::optional<absl::Duration> stop_window_;
  HandlerHandle at_epoch_end_;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_PREEMPTION_H_
