// File: distributed/launch.h
//
// Launch: reads the launcher's environment (mpirun, srun, torchrun-style; see launcher_env.h) and
// creates the Communicator for this process:
//   backend "single"  world size 1 (an error if the launcher says there are more ranks)
//   backend "mpi"     MPI_COMM_WORLD (its size must agree with the launcher's)
//   backend "nccl"    NCCL on the GPU of this local rank; the ncclUniqueId travels through MPI
//                     when an MPI launcher started the job, else through MASTER_ADDR:MASTER_PORT
//   backend "auto"    NCCL when this build has it, CUDA devices exist and there are several
//                     ranks; else MPI when an MPI launcher started the job; else single.
// A bad or partial environment is an error message here, not a hang later.
//
// Example:
//   absl::StatusOr<std::unique_ptr<ember::dist::Communicator>> world =
//       ember::dist::Launch({.backend = "auto"});
#ifndef EMBER_DISTRIBUTED_LAUNCH_H_
#define EMBER_DISTRIBUTED_LAUNCH_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"
#include "distributed/launcher_env.h"

namespace ember::dist {

struct LaunchOptions {
  std::string backend = "auto";  // auto | single | mpi | nccl
  absl::Duration init_timeout = absl::Seconds(300);
};

absl::StatusOr<std::unique_ptr<Communicator>> Launch(const LaunchOptions& options,
                                                     const LaunchInfo& info);
// Reads the process environment.
absl::StatusOr<std::unique_ptr<Communicator>> Launch(const LaunchOptions& options = {});

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_LAUNCH_H_
