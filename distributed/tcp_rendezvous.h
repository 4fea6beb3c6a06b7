// File: distributed/tcp_rendezvous.h
//
// ShareFromRank0: rank 0 listens on `port` and sends `payload` to each of the other
// world_size - 1 ranks, which connect to `addr`:`port` (retrying until it listens). Used to hand
// out NCCL's ncclUniqueId in torchrun-style launches (MASTER_ADDR, MASTER_PORT). Every step is
// bounded by `deadline`. IPv4 and IPv6 host names or addresses: rank 0 listens dual-stack (IPv6
// accepting IPv4), or IPv4 alone where IPv6 is unavailable. Thread-safe (no shared state).
// A rank counts only once it has said who it is: each connecting rank first sends a hello (magic
// "EMBH", protocol version, its rank); rank 0 answers only a valid hello of a rank in
// [1, world_size) not served yet, and drops, uncounted, connections that close, send anything
// else or stay silent for 5 s (a port probe or health check never takes a rank's place).
#ifndef EMBER_DISTRIBUTED_TCP_RENDEZVOUS_H_
#define EMBER_DISTRIBUTED_TCP_RENDEZVOUS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ember::dist {

// On rank 0 returns `payload` (at most 16 MiB) after every peer received it; elsewhere returns
// what rank 0 sent. An answer announcing more than that (another service on the port) is refused
// as DATA_LOSS before anything is allocated for it; GatherThroughRank0 likewise refuses a table
// longer than world_size payloads.
absl::StatusOr<std::string> ShareFromRank0(int rank, int world_size, const std::string& addr,
                                           int port, const std::string& payload,
                                           absl::Time deadline);

// ShareFromRank0, keeping the rendezvous's connections open afterwards as a control channel of the
// job (tcp_notices.h): `connections` gets world_size entries, the caller's to close: on rank 0 the
// connection to each other rank at its index (-1 at 0), elsewhere the connection to rank 0 at
// index 0 (-1 elsewhere). On failure nothing stays open.
absl::StatusOr<std::string> ShareFromRank0KeepingConnections(int rank, int world_size, const std::string& addr,
                                                             int port, const std::string& payload,
                                                             absl::Time deadline, std::vector<int>* connections);

// GatherThroughRank0: an all-gather of one string per rank through rank 0 (how the Gloo backend
// exchanges its connection addresses, gloo_communicator.h). Rank 0 listens on `port`; each other
// rank connects, says a hello of its own kind (magic "EMBG", version, rank, WORLD_SIZE: never
// mistaken for a ShareFromRank0 peer, nor one for it; a rank of another WORLD_SIZE fails rank 0
// at once, naming both sizes, and is told so) followed by its payload (at most 16 MiB); once every rank
// in [1, world_size) has sent one, rank 0 answers each with all world_size payloads, in rank
// order. Stray connections are dropped uncounted as above. Returns the world_size payloads.
absl::StatusOr<std::vector<std::string>> GatherThroughRank0(int rank, int world_size,
                                                            const std::string& addr, int port,
                                                            const std::string& payload,
                                                            absl::Time deadline);

// The address of this host from which the kernel would reach `host` (a name or an address): the
// source address of a UDP socket connected to it (connecting a UDP socket sends nothing). This is
// the interface that faces the other ranks, whatever the host name resolves to (127.0.1.1 in
// Debian's /etc/hosts, a container's name). An address that does not resolve, or has no route, is
// an error naming it.
absl::StatusOr<std::string> LocalAddressToward(const std::string& host);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_TCP_RENDEZVOUS_H_
