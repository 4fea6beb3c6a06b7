// File: distributed/tcp_notices.h
//
// TcpNotices: the failure notices of a job whose backend has no side channel of its own (NCCL
// under torchrun, where a TCP rendezvous hands out the NCCL id), over the rendezvous's own
// connections kept open (ShareFromRank0KeepingConnections): a star through rank 0.
//
// A rank that fails sends "its rank, its text" to rank 0, which passes it on to every other rank
// when it next polls; rank 0 sends its own to every rank. Poll() never blocks: it reads what has
// arrived (one non-blocking recv per connection), so a wait loop can call it every few polls
// (NcclCommunicator does, every 64). A connection that closes (a peer that ended, or died) is
// dropped without a notice: a death is what the collectives' deadlines are for; only a rank that
// says it failed is named. Sends are bounded (500 ms in all): a stalled peer that does not read
// never holds a failing rank.
//
// Frame: "EMBN", origin rank (uint32, network order), length (uint32, network order, at most
// kMaxNoticeBytes), the text. Anything else on a connection (another service) drops it.
//
// Thread safety: thread-safe (one mutex): the training thread polls; a failure on autograd's device
// thread may send.
#ifndef EMBER_DISTRIBUTED_TCP_NOTICES_H_
#define EMBER_DISTRIBUTED_TCP_NOTICES_H_

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/mutex.h"

namespace ember::dist {

class TcpNotices {
 public:
  static constexpr size_t kMaxNoticeBytes = 1024;

  // `connections` as ShareFromRank0KeepingConnections returns them (taken over: closed with this
  // object).
  TcpNotices(int rank, int world_size, std::vector<int> connections);
  ~TcpNotices();
  TcpNotices(const TcpNotices&) = delete;
  TcpNotices& operator=(const TcpNotices&) = delete;

  // This rank's failure (`text`, cut to kMaxNoticeBytes): to rank 0, or from rank 0 to every
  // rank. Once; later calls do nothing.
  void Send(const std::string& text) ABSL_LOCKS_EXCLUDED(mu_);
  // The first notice that arrived (origin rank and text), or nullopt. On rank 0, a notice from a
  // rank is passed on to the others first.
  std::optional<std::pair<int, std::string>> Poll() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Peer {
    int fd = -1;
    std::string in;  // bytes received, not yet a whole frame
  };
  void SendFrame(const std::string& frame, int except) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void Drop(Peer& p);

  const int rank_;
  const int world_size_;
  Mutex mu_;
  std::vector<Peer> peers_ ABSL_GUARDED_BY(mu_);  // by rank; rank 0 holds every other rank, the others only rank 0
  bool sent_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<std::pair<int, std::string>> first_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_TCP_NOTICES_H_
