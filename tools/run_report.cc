#include "tools/run_report.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "distributed/launcher_env.h"
#include "handlers/early_stopping.h"
#include "handlers/preemption.h"
#include "handlers/terminate_on_nan.h"
#include "handlers/time_limit.h"
#include "nlohmann/json.hpp"

namespace ember::tools {
namespace {

// A JSON string (every control character escaped), or null.
std::string JsonString(const std::optional<std::string>& s) {
  if (!s) return "null";
  return nlohmann::json(*s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::atomic<bool> g_final_printed{false};

void FinalLineAtExit() {
  if (g_final_printed) return;
  absl::StatusOr<dist::LaunchInfo> info = dist::ReadLaunchInfo();
  RunReport report;
  if (info.ok()) {
    report.rank = info->rank;
    report.world_size = info->world_size;
  }
  PrintFinalLine(report);
}

}  // namespace

std::string StoppedBy(const std::string& terminated_by) {
  if (terminated_by == Preemption::kName) return "preempted";
  if (terminated_by == TerminateOnNan::kName) return "terminate_on_nan";
  if (terminated_by == EarlyStopping::kName) return "early_stopping";
  if (terminated_by == TimeLimit::kName) return "time_limit";
  return "completed";
}

int ExitCodeOf(const std::string& stopped_by) {
  if (stopped_by == "error") return kExitError;
  if (stopped_by == "terminate_on_nan") return kExitNan;
  return kExitOk;
}

void RunReport::SetOutcome(const std::string& terminated_by) {
  stopped_by = StoppedBy(terminated_by);
  exit_code = ExitCodeOf(stopped_by);
}

void RunReport::SetError() {
  stopped_by = "error";
  exit_code = kExitError;
}

std::string FinalLine(const RunReport& r) {
  return absl::StrFormat(
      "{\"rank\": %d, \"world_size\": %d, \"epoch\": %d, \"iteration\": %d, \"stopped_by\": \"%s\", "
      "\"best_checkpoint\": %s, \"latest_checkpoint\": %s, \"best_score\": %s}",
      r.rank, r.world_size, r.epoch, r.iteration, r.stopped_by, JsonString(r.best_checkpoint),
      JsonString(r.latest_checkpoint), r.best_score ? absl::StrFormat("%.6f", *r.best_score) : "null");
}

void PrintFinalLine(const RunReport& report) {
  if (g_final_printed.exchange(true)) return;
  std::printf("%s\n", FinalLine(report).c_str());
  std::fflush(stdout);
}

void InstallFinalLineAtExit() { std::atexit(FinalLineAtExit); }

int Finish(const RunReport& report, dist::World& world) {
  PrintFinalLine(report);
  std::fflush(stderr);
  if (world.Shutdown().ok() && report.exit_code == kExitOk) return kExitOk;
  std::fflush(nullptr);
  ::_exit(report.exit_code);
}

}  // namespace ember::tools
