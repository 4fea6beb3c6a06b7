// File: distributed/nccl_communicator.h
//
// The NCCL backend: one CUDA device per local rank (device = local_rank % device count), a
// communicator of its own on its own non-blocking CUDA stream. The ncclUniqueId of rank 0 reaches
// the other ranks through a bootstrap Communicator (MPI), a TCP rendezvous at MASTER_ADDR:PORT
// (torchrun-style launches), or a file on a shared filesystem. The NCCL communicator is created
// non-blocking; every operation is polled (cudaStreamQuery, ncclCommGetAsyncError) until it
// completes or the deadline passes, and then ncclCommAbort() frees the GPU and the call returns
// kDeadlineExceeded: a dead peer never hangs a rank. A peer that failed outside a collective ends
// the wait at once instead, through NcclOptions::notices (the MPI bootstrap under an MPI
// launcher), under a TCP rendezvous the rendezvous's connections kept open (tcp_notices.h), or
// under a file rendezvous a notice file beside it ("<rendezvous_file>.notice-<digest of this
// attempt's id>": written by link(2) from a temporary file, so the first failure told stays and a
// reader never sees half a notice; looked for at most every 0.5 s plus 1 ms per rank while a rank
// waits; one small file per failed attempt stays there; rank 0 removes a notice of the same id
// before publishing it, so an attempt never reads an earlier one's, also when NCCL_COMM_ID makes
// ids repeat). A failed rank whose notice file could not be written comes to the shutdown meeting.
// A rank whose start fails by its own fault (no device, a CUDA call, ncclGetUniqueId, an invalid
// NCCL call) tells the others the same way rather than leave them to the init timeout: it logs
// the error, then rank 0 hands out its failure in place of the id, every peer then failing with
// "rank 0 failed: ..."; another rank still joins the rendezvous (for at most a minute), then
// sends a notice. Not told: a missed init deadline or an NCCL system or remote error (what every
// rank sees of a lost peer), and under a rendezvous file nothing before the id is shared (there
// is no attempt-unique name yet: a stale one would fail the next attempt of the same run id);
// from ncclCommInitRank on, as under TCP.
//
// Failures: on any NCCL error (returned, or asynchronous from ncclCommGetAsyncError), a CUDA error
// while a collective is in flight, or a deadline, the communicator is aborted (ncclCommAbort;
// never ncclCommDestroy, also when the non-blocking ncclCommInitRank fails) and poisoned before
// the call returns; every later call and every pending collective then fails, even one whose
// completion event had fired (its result may be partial). Only a healthy communicator is destroyed.
//
// Host buffers (the per-event consensus values, broadcasts) are staged through a device buffer
// and pinned host memory. They grow to the largest collective without a device-wide cudaFree
// (the old ones go once this communicator's stream is idle, polled against the deadline; device
// memory stream-ordered), and staging above 1 MiB is released after the collective that needed it.
//
// Builds without NCCL (no nccl.h / libnccl.so under CUDA_HOME or /usr/local/cuda at build time)
// keep this API: NcclBuilt() is false and CreateNcclCommunicator returns kUnimplemented with a
// message that says so.
#ifndef EMBER_DISTRIBUTED_NCCL_COMMUNICATOR_H_
#define EMBER_DISTRIBUTED_NCCL_COMMUNICATOR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"

namespace ember::dist {

struct NcclOptions {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  // How rank 0's ncclUniqueId reaches the others: the first that is set is used.
  Communicator* bootstrap = nullptr;  // e.g. an MpiCommunicator (not owned)
  // Where the peers' failure notices arrive (not owned; must outlive the NCCL communicator): each
  // collective checks it before it is issued, and every wait (a collective's event, init, an
  // enqueue) every 64 polls, on the thread that made the communicator; once a notice
  // came, aborts the NCCL communicator and fails with kAborted "rank R failed: <its error>
  // (while this rank waited in ...)" instead of waiting out its deadline. dist::Launch passes the
  // MPI bootstrap, whose control channel carries the notices (CombineWithBootstrap sends them).
  Communicator* notices = nullptr;
  std::string master_addr;            // TCP rendezvous (torchrun-style): rank 0 listens on
  int rendezvous_port = 0;            //   rendezvous_port (LaunchInfo says which port)
  std::string rendezvous_port_from;   //   which variables chose it, for the error messages
  std::string rendezvous_file;        // shared filesystem (file_rendezvous.h)
  std::string rendezvous_run_id;      // required with rendezvous_file: rejects stale files
  absl::Duration init_timeout = absl::Seconds(300);
};

// True when this build has the NCCL backend.
bool NcclBuilt();
// CUDA devices visible to this process (0 without CUDA, without a driver, or without NCCL).
int CudaDeviceCount();

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const NcclOptions& options);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_NCCL_COMMUNICATOR_H_
