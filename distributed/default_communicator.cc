#include "distributed/default_communicator.h"

#include <atomic>

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

}  // namespace ember::dist
