#include "distributed/default_communicator.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "distributed/launcher_env.h"

namespace ember::dist {
namespace {
std::atomic<Communicator*> g_default{nullptr};
}  // namespace

Communicator* DefaultCommunicator() { return g_default.load(); }

Communicator* SetDefaultCommunicator(Communicator* comm) { return g_default.exchange(comm); }

int LauncherWorldSize() {
  absl::StatusOr<LaunchInfo> info = ReadLaunchInfo();
  return info.ok() ? info->world_size : 1;
}

absl::Status CheckWorldExists(const char* who, const char* consequence, const char* how) {
  if (DefaultCommunicator() != nullptr) return absl::OkStatus();
  const int launched = LauncherWorldSize();
  if (launched <= 1) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      who, ": this process is one of ", launched, " ranks (launcher environment) but no World exists, so ",
      consequence, ": create the World (ember::dist::LaunchWorld()) before ", who, ", or pass ", how));
}

}  // namespace ember::dist
