// File: distributed/launch.h
//
// Launch: reads the launcher's environment (mpirun, srun, torchrun-style; see launcher_env.h) and
// creates the Communicator for this process:
//   backend "single"  world size 1 (an error if the launcher says there are more ranks)
//   backend "mpi"     MPI_COMM_WORLD (its size must agree with the launcher's)
//   backend "nccl"    NCCL on the GPU of this local rank; the ncclUniqueId travels through MPI
//                     when an MPI launcher started the job, else through a TCP rendezvous at
//                     MASTER_ADDR (port: launcher_env.h's rendezvous_port)
//   backend "gloo"    Gloo over TCP (gloo_communicator.h), host buffers only: the ranks meet at
//                     MASTER_ADDR on the rendezvous port (launcher_env.h: MASTER_PORT + 1 beside
//                     torchrun's agent store, MASTER_PORT in a plain or Kubernetes-style launch;
//                     LOCAL_RANK may be absent, one process per pod); GLOO_SOCKET_IFNAME picks the
//                     interface, else the host name (127.0.0.1 when MASTER_ADDR is loopback)
//   backend "auto"    NCCL when the tensors are on GPUs (device "cuda"), this build has NCCL and
//                     there are several ranks; else MPI when an MPI launcher started the job;
//                     else single for one rank; else Gloo for CPU ranks with MASTER_ADDR (torchrun,
//                     Kubernetes). Device "cpu" never picks NCCL.
// Device "cuda" needs one visible GPU per rank of the node (the local rank picks it): more ranks
// on a node than GPUs is an error naming both numbers, whatever the backend.
// A bad or partial environment is an error message here, not a hang later.
//
// LaunchWorld returns a World: the communicator plus rank, size and local rank, registered as the
// process's default communicator (default_communicator.h) for as long as the World lives, so the
// engines and checkpoints created after it use it without any wiring. Destroying the World (or
// Shutdown) meets the other ranks once, with a deadline, on the control channel
// (Communicator::Meet: a barrier there cannot complete a training collective a peer left
// pending), each rank saying whether it failed, and then finalizes the backend. A rank that
// failed (its communicator poisoned) still comes to the meeting unless a collective missed its
// deadline or the transport broke (on Gloo, whose failed ranks close their connections, it never
// comes), so that every rank's last words are out before mpirun ends
// the job; Shutdown then returns the failure (this rank's, or kAborted "rank R failed: ..." for
// a peer's) and does not finalize (MPI_Finalize would wait for the lost rank forever), so the
// process can always exit.
//
// Example:
//   auto world = ember::dist::LaunchWorld();          // absl::StatusOr<std::unique_ptr<World>>
//   if (!world.ok()) { std::cerr << world.status() << "\n"; return 1; }
//   ember::Engine trainer(step);                      // agrees through (*world)->communicator()
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
  std::string backend = "auto";  // auto | single | mpi | nccl | gloo
  std::string device = "cpu";    // cpu | cuda: where the tensors the collectives carry live
  absl::Duration init_timeout = absl::Seconds(300);
};

absl::StatusOr<std::unique_ptr<Communicator>> Launch(const LaunchOptions& options,
                                                     const LaunchInfo& info);
// The backend Launch would create ("single", "mpi", "nccl" or "gloo") for `info` on a node with `gpus`
// visible GPUs, or the error it would give.
absl::StatusOr<std::string> ChooseBackend(const LaunchOptions& options, const LaunchInfo& info, int gpus,
                                          bool nccl_built);
// Reads the process environment.
absl::StatusOr<std::unique_ptr<Communicator>> Launch(const LaunchOptions& options = {});

class World {
 public:
  explicit World(std::unique_ptr<Communicator> comm);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return comm_->rank(); }
  int world_size() const { return comm_->world_size(); }
  int local_rank() const { return comm_->local_rank(); }
  Communicator& communicator() const { return *comm_; }

  // Meets every rank (bounded by `deadline`) and finalizes; never hangs (see above). Returns the
  // barrier's error, if any. Idempotent; the destructor calls it.
  absl::Status Shutdown(absl::Duration deadline = absl::Seconds(30));

 private:
  std::unique_ptr<Communicator> comm_;
  Communicator* previous_default_;
  bool shut_down_ = false;
  bool met_ = false;
};

// What backend "nccl" returns under an MPI launcher: `main` (NCCL) runs every collective, device
// buffers included; `bootstrap` (MPI, which carried the NCCL id) carries the failure notices and
// runs the shutdown meeting on its control channel, and is destroyed after `main`. Public for
// tests (any two communicators of the same ranks).
std::unique_ptr<Communicator> CombineWithBootstrap(std::unique_ptr<Communicator> bootstrap,
                                                   std::unique_ptr<Communicator> main);

absl::StatusOr<std::unique_ptr<World>> LaunchWorld(const LaunchOptions& options = {});

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_LAUNCH_H_
