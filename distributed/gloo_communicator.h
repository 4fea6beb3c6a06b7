// File: distributed/gloo_communicator.h
//
// GlooCommunicator: the Communicator over Gloo's TCP transport (Debian's libgloo, used directly,
// not through c10d's ProcessGroupGloo: docs/design.md says why), for CPU ranks that no MPI
// launcher started (torchrun, Kubernetes operators: MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK).
// Every collective is one Gloo call given the time left to the caller's deadline as its own
// timeout (Gloo takes one per operation), so a stalled peer gives kDeadlineExceeded at the
// deadline, not a hang; a peer that died or closed its connections gives kUnavailable as soon as
// Gloo sees it (at the latest at the deadline). Gloo closes a context's connections when one of
// its operations times out, so a connection lost within the last tenth of the time before the
// deadline (at most 500 ms) is reported as the deadline: a peer gave up on the same stall. Errors name the collective, this rank and the
// world ("gloo all-reduce of 4 float64 (SUM) on rank 1 of 4 (peers 0, 2, 3): ..."); the engine
// adds the event and iteration.
//
// Rendezvous: Create() makes one TCP pair per peer and exchanges their addresses through
// `exchange`, an all-gather of one string per rank (GatherThroughRank0 of tcp_rendezvous.h at
// MASTER_ADDR and the rendezvous port of launcher_env.h, in Launch: beside torchrun's agent store,
// never on it; a stray connection to that port never counts as a rank). Nothing is global to the
// process: a communicator can be built again, in the same process, with another rank, world size
// and exchange (a new member list after a rank was lost, on a new port or generation), once the
// old one is destroyed or abandoned.
//
// Matching spaces: Gloo keeps each kind of collective apart (all-reduce, all-gather, broadcast,
// barrier have slots of their own), and the tags keep gradient buffers (StartAllReduce), blocking
// all-reduces and the shutdown meeting apart (communicator.h).
//
// Memory: a collective given up on (deadline, error) may still be written by Gloo's transport
// thread when a late peer's data arrives: the communicator's own collectives run on staging
// memory that a failure leaves to the transport (AbandonToTransport), and StartAllReduce's caller
// does the same for its buffer (communicator.h).
//
// Failure notices (communicator.h): carried. Every rank keeps one receive posted per peer, on a
// slot of its own (outside the slots of Gloo's collectives). A rank that fails outside a
// collective (Fail) sends "rank R failed: <error>" to every peer (at most 500 ms: a peer may be
// stalled or gone), waits 100 ms, then closes its connections (a normal close: what is queued is
// delivered first). A peer waiting in a collective then fails at once; it reads the notice (Gloo
// cannot test a receive without failing the context when nothing came, so notices are read only
// once a collective has failed) and returns ABORTED "rank R failed: <error> (while this rank
// waited in gloo <collective> on rank r of N ...)". A rank whose collective fails (a notice, a
// lost connection, a deadline) closes its own connections and sends nothing: a peer waiting on it
// (a ring's far side) fails at once too, and nobody is named as failed who did not. A rank whose
// connections are closed skips the shutdown meeting.
//
// Thread safety: one thread at a time (the training thread); Gloo's own transport thread runs
// inside. StartAllReduce completes before it returns (the default of communicator.h).
//
// Builds without Gloo (tools/gpu/CMakeLists.txt) keep this API: GlooBuilt() is false and Create
// returns kUnimplemented saying so.
#ifndef EMBER_DISTRIBUTED_GLOO_COMMUNICATOR_H_
#define EMBER_DISTRIBUTED_GLOO_COMMUNICATOR_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"

namespace ember::dist {

// An all-gather of one string per rank, bounded by the deadline: returns world_size strings in
// rank order. GatherThroughRank0 (tcp_rendezvous.h) is one.
using AddressExchange =
    std::function<absl::StatusOr<std::vector<std::string>>(const std::string& mine, absl::Time deadline)>;

struct GlooOptions {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  AddressExchange exchange;  // required when world_size > 1
  // Where this rank listens for its peers' connections: an interface name (as GLOO_SOCKET_IFNAME)
  // or else a host name or address (LaunchWorld passes the address this host reaches MASTER_ADDR
  // from, tcp_rendezvous.h LocalAddressToward); both empty: the host name (gethostname), or
  // 127.0.0.1 when `loopback` (every rank on this host, as when MASTER_ADDR is a loopback address).
  std::string iface;
  std::string hostname;
  bool loopback = false;
  absl::Duration init_timeout = absl::Seconds(300);
};

// True when this build has the Gloo backend.
bool GlooBuilt();

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(const GlooOptions& options);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_GLOO_COMMUNICATOR_H_
