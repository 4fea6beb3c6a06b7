// Fuzz target: the launcher-environment parser on arbitrary variable values. The input is split
// at NUL bytes into the values of the variables the parser reads, in a fixed order.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "distributed/launcher_env.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const char* const kNames[] = {
      "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
      "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "SLURM_PROCID", "SLURM_NTASKS",
      "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
      "MASTER_ADDR", "MASTER_PORT"};
  std::map<std::string, std::string> env;
  std::string current;
  size_t name = 0;
  for (size_t i = 0; i <= size && name < sizeof(kNames) / sizeof(kNames[0]); ++i) {
    if (i == size || data[i] == 0) {
      // A leading '!' leaves the variable unset.
      if (current.empty() || current[0] != '!') env[kNames[name]] = current;
      current.clear();
      ++name;
    } else {
      current.push_back(static_cast<char>(data[i]));
    }
  }
  absl::StatusOr<ember::dist::LaunchInfo> info = ember::dist::ReadLaunchInfo(ember::dist::MapEnv(env));
  if (info.ok() && info->world_size > 0 && (info->rank < 0 || info->rank >= info->world_size)) __builtin_trap();
  return 0;
}
