// File: distributed/launcher_env.h
//
// Reads rank, world size and local rank from the environment that a launcher sets:
//   OpenMPI mpirun     OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
//   PMIx (srun --mpi=pmix, prte)  PMIX_RANK (+ PMI_SIZE or the next launcher's size), SLURM_LOCALID,
//                      SLURM_NTASKS_PER_NODE (else SLURM_TASKS_PER_NODE at SLURM_NODEID)
//   MPICH / Hydra      PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS
//   Slurm srun         SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE
//   torchrun-style     RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
// in that order of precedence (an mpirun inside a Slurm allocation reports OpenMPI's numbers).
// Torchrun-style launches also give the port where rank 0 hands out what the others need (NCCL's
// unique id, tcp_rendezvous.h): EMBER_RENDEZVOUS_PORT when set; else MASTER_PORT + 1 when
// TORCHELASTIC_USE_AGENT_STORE=True (torchrun's agent serves its own TCPStore on MASTER_PORT and
// its workers are only clients of it, so that port is taken); else MASTER_PORT, which a plain
// torchrun-style launch leaves for rank 0 to listen on, as PyTorch's own rank 0 does.
// Under torchrun's elastic agent, TORCHELASTIC_RESTART_COUNT and TORCHELASTIC_MAX_RESTARTS say
// which attempt this is and how many restarts the agent allows (a trainer that stops for a
// preemption with restarts left asks to be restarted: tools/run_report.h).
// No launcher variables at all means a single process. A partial set (RANK without WORLD_SIZE),
// a value that is not an integer, or one out of range (rank >= world size) is an error that
// names the variable and its value.
//
// Thread-safe (reads a snapshot of the environment passed in, or the process environment).
#ifndef EMBER_DISTRIBUTED_LAUNCHER_ENV_H_
#define EMBER_DISTRIBUTED_LAUNCHER_ENV_H_

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace ember::dist {

struct LaunchInfo {
  std::string launcher;  // "none", "openmpi", "pmix", "mpich", "slurm", "torchrun"
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr;  // torchrun-style only
  int master_port = 0;
  // Where rank 0 listens for the TCP rendezvous (see above), and which variables chose it, for
  // error messages ("MASTER_PORT", "EMBER_RENDEZVOUS_PORT", ...). 0 and empty when not torchrun.
  int rendezvous_port = 0;
  std::string rendezvous_port_from;
  // True when an MPI library can bootstrap this job (launched by mpirun, srun with PMI(x), ...).
  bool mpi_launched = false;
  // torchrun's elastic agent: this attempt (0: the first) and the restarts it allows; both -1
  // when the agent did not say (not torchrun, or a launcher that only mimics its variables).
  int restart_count = -1;
  int max_restarts = -1;

  // True when an elastic agent will start this worker group again if it exits with an error.
  bool restarts_left() const { return restart_count >= 0 && max_restarts >= 0 && restart_count < max_restarts; }
};

// `getenv` returns a variable's value or nullopt; the default reads the process environment.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;

absl::StatusOr<LaunchInfo> ReadLaunchInfo(const EnvLookup& getenv);
absl::StatusOr<LaunchInfo> ReadLaunchInfo();

// For tests: an EnvLookup over a map.
EnvLookup MapEnv(std::map<std::string, std::string> env);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_LAUNCHER_ENV_H_
