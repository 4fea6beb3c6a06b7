// File: tools/run_report.h
//
// How a trainer run ends: one final JSON line per rank on stdout and an exit code.
//
//   {"rank": 0, "world_size": 2, "epoch": 3, "iteration": 255, "stopped_by": "completed",
//    "best_checkpoint": "/abs/checkpoint_3_val_accuracy=0.9634.pt", "latest_checkpoint": ...,
//    "best_score": 0.963400}
//
// stopped_by and the exit code: completed, early_stopping, preempted, time_limit and evaluated exit 0;
// terminate_on_nan exits 3; preempted exits 4 instead of 0 under torchrun's elastic agent when
// every rank's agent has a restart left and --resume was given (agreed; so that the agents
// restart the workers); error exits 1 (bad flags, data, output directory, a failed collective
// or save). Every exit prints the line, even abseil's own exit on a malformed flag
// (InstallFinalLineAtExit). The checkpoint fields name files on disk (null: none).
#ifndef EMBER_TOOLS_RUN_REPORT_H_
#define EMBER_TOOLS_RUN_REPORT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "distributed/launch.h"

namespace ember::tools {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitNan = 3;
// preempted under torchrun's elastic agent with restarts left on every rank
// (TORCHELASTIC_RESTART_COUNT < TORCHELASTIC_MAX_RESTARTS) and --resume: the agent restarts the
// workers only after a failed exit.
inline constexpr int kExitPreemptedRestart = 4;

struct RunReport {
  int rank = 0;
  int world_size = 1;
  int64_t epoch = 0;
  int64_t iteration = 0;
  std::string stopped_by = "error";
  int exit_code = kExitError;
  std::optional<std::string> best_checkpoint;
  std::optional<std::string> latest_checkpoint;
  std::optional<double> best_score;

  // The outcome of a run that ended without an error, from the name of the handler that
  // terminated the engine (Engine::outcome().terminated_by; empty: the epochs ran out).
  void SetOutcome(const std::string& terminated_by);
  // An error ended the run: stopped_by "error", exit 1 (the fields already set stay).
  void SetError();
};

// The outcome's stopped_by for a handler's name ("early_stopping" for EarlyStopping::kName, ...;
// "completed" for an empty name), and its exit code.
std::string StoppedBy(const std::string& terminated_by);
int ExitCodeOf(const std::string& stopped_by);

// The final line (one JSON object, no newline); strings are escaped, whatever a path holds.
std::string FinalLine(const RunReport& report);
// Prints the final line to stdout and flushes it; only the first call prints.
void PrintFinalLine(const RunReport& report);
// At exit, prints an error line (rank and size from the launcher's environment) unless one was
// printed: covers abseil's exit on a malformed flag and an exit before the world is launched.
void InstallFinalLineAtExit();

// Prints the final line, then meets the other ranks before exiting (mpirun ends the whole job at
// the first non-zero exit, so every rank's final line must be out first; after a failed
// collective there is no meeting) and returns the exit code, or exits with it at once when the
// world could not shut down cleanly.
int Finish(const RunReport& report, dist::World& world);

}  // namespace ember::tools

#endif  // EMBER_TOOLS_RUN_REPORT_H_
