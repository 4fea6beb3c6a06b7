#include "distributed/gloo_communicator.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <map>
#include <thread>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/large_buffer.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/context.h"
#include "gloo/transport/context.h"
#include "gloo/transport/device.h"
#include "gloo/transport/pair.h"
#include "gloo/transport/tcp/address.h"
#include "gloo/transport/tcp/attr.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "gloo/types.h"

namespace ember::dist {
namespace {

// Tags: gradient buffers (StartAllReduce) never meet blocking all-reduces; the shutdown meeting
// (an all-gather) never meets an agreement (communicator.h).
constexpr uint32_t kReduceTag = 1;
constexpr uint32_t kBufferTag = 2;
constexpr uint32_t kGatherTag = 3;
constexpr uint32_t kMeetTag = 4;
constexpr uint32_t kBroadcastTag = 5;
constexpr uint32_t kBarrierTag = 6;

// Failure notices (communicator.h) travel on a slot of their own, outside the slot prefixes of
// Gloo's collectives (gloo/types.h), as one fixed-size message: a 4-byte length, then the text.
constexpr uint8_t kNoticeSlotPrefix = 0x7e;
constexpr size_t kNoticeBytes = 1024;
// How long a failing rank waits for its notices to leave (a peer may be stalled or gone), and
// then for its peers' transport threads to read them before the connections are reset.
constexpr auto kNoticeSendBudget = std::chrono::milliseconds(500);
constexpr auto kNoticeReadGrace = std::chrono::milliseconds(100);

// The Gloo tag of one collective: its kind (the base tags above, in the low 3 bits) with a hash of
// its element type and counts in the other 29. Two ranks running collectives that differ in kind,
// type or count then never share a tag, so they never match: each waits for the other until its
// deadline (a DEADLINE_EXCEEDED) instead of Gloo's transport thread aborting the process on a size
// mismatch or two same-size buffers of different types reducing into garbage.
enum class TagType : uint32_t { kNone = 0, kFloat32 = 1, kFloat64 = 2, kBytes = 3 };
uint32_t TagFor(uint32_t base, TagType type, uint64_t count, uint64_t count2 = 0) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over (base, type, count, count2)
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  mix(base);
  mix(static_cast<uint32_t>(type));
  mix(count);
  mix(count2);
  const uint32_t folded = static_cast<uint32_t>(h ^ (h >> 32));
  return (folded << 3) | (base & 7u);
}
template <typename T>
constexpr TagType TypeOf() {
  return std::is_same_v<T, double> ? TagType::kFloat64 : TagType::kFloat32;
}

// A gloo::Context whose pairs are connected from an AddressExchange (what
// gloo::rendezvous::Context::connectFullMesh does through a gloo Store).
class MeshContext final : public gloo::Context {
 public:
  MeshContext(int rank, int size) : gloo::Context(rank, size) {}

  // Fails every pending operation and closes every connection with a normal close (FIN: bytes
  // still queued, a notice, reach the peer before its end of file), as Gloo does when a wait times
  // out: which is how it is done (a receive that is never posted, waited for 1 ms), the transport
  // context's own signalException being out of reach (Debian's libgloo-dev lacks a header it
  // needs). Context::closeConnections would reset them (SO_LINGER 0), which may drop what is queued.
  void Reset() {
    char byte = 0;
    try {
      std::unique_ptr<gloo::transport::UnboundBuffer> never = createUnboundBuffer(&byte, 1);
      never->waitRecv(nullptr, std::chrono::milliseconds(1));
    } catch (const std::exception&) {  // the expected timeout: every pair is now failed and closed
    }
  }

  absl::Status Connect(std::shared_ptr<gloo::transport::Device> device, const AddressExchange& exchange,
                       absl::Time deadline) {
    const auto timeout = std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(deadline - absl::Now())));
    device_ = std::move(device);
    transportContext_ = device_->createContext(rank, size);
    transportContext_->setTimeout(timeout);
    setTimeout(timeout);
    // This rank's table: for each peer, a 4-byte length and the address of the pair to it.
    std::string mine;
    std::map<int, int> listening;  // this rank's listening port -> the peer its pair is to
    for (int i = 0; i < size; ++i) {
      if (i == rank) continue;
      std::vector<char> bytes = transportContext_->createPair(i)->address().bytes();
      // Before the pair connects (a pair that dials out reports its outgoing port afterwards).
      if (const int port = Port(gloo::transport::tcp::Address(bytes).getSockaddr()); port > 0) {
        // One listener shared by every pair (a Gloo that tells connections apart by a sequence
        // number) cannot say which peer a socket is from: such a port names none.
        auto [it, added] = listening.emplace(port, i);
        if (!added) it->second = -1;
      }
      const uint32_t n = static_cast<uint32_t>(bytes.size());
      mine.append(reinterpret_cast<const char*>(&n), 4);
      mine.append(bytes.data(), bytes.size());
    }
    absl::StatusOr<std::vector<std::string>> all = exchange(mine, deadline);
    if (!all.ok()) return all.status();
    if (all->size() != static_cast<size_t>(size)) {
      return absl::InternalError(absl::StrCat("address exchange gave ", all->size(), " entries for ", size, " ranks"));
    }
    for (int i = 0; i < size; ++i) {
      if (i == rank) continue;
      // Rank i's table lists its peers in rank order without itself: this rank is entry
      // rank - (rank > i).
      const std::string& table = (*all)[static_cast<size_t>(i)];
      const int entry = rank - (rank > i ? 1 : 0);
      size_t at = 0;
      std::vector<char> address;
      for (int e = 0; e <= entry; ++e) {
        uint32_t n = 0;
        if (table.size() - at < 4) return absl::DataLossError(absl::StrCat("rank ", i, "'s addresses are truncated"));
        std::memcpy(&n, table.data() + at, 4);
        at += 4;
        if (table.size() - at < n) return absl::DataLossError(absl::StrCat("rank ", i, "'s addresses are truncated"));
        if (e == entry) address.assign(table.data() + at, table.data() + at + n);
        at += n;
      }
      try {
        transportContext_->getPair(i)->connect(address);
      } catch (const std::exception& e) {
        return absl::UnavailableError(absl::StrCat("connecting to rank ", i, ": ", e.what()));
      }
      // Gloo's errors name the address at a connection's other end ("Connection closed by peer
      // [addr]:port"): the peer's listening address where this rank connected to it,
      peer_addresses_.emplace_back(i, gloo::transport::tcp::Address(address).str());
    }
    // and the peer's own port where it connected to this rank: found from this rank's sockets
    // accepted on the listening port of the pair to that peer.
    if (DIR* fds = ::opendir("/proc/self/fd"); fds != nullptr) {
      while (const dirent* e = ::readdir(fds)) {
        const int fd = std::atoi(e->d_name);
        if (fd <= 2 || fd == ::dirfd(fds)) continue;
        sockaddr_storage local{}, remote{};
        socklen_t local_len = sizeof(local), remote_len = sizeof(remote);
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
            ::getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &remote_len) != 0) {
          continue;
        }
        auto it = listening.find(Port(local));
        if (it == listening.end() || it->second < 0) continue;
        peer_addresses_.emplace_back(
            it->second, gloo::transport::tcp::Address(reinterpret_cast<const sockaddr*>(&remote), remote_len).str());
      }
      ::closedir(fds);
    }
    return absl::OkStatus();
  }

  static int Port(const sockaddr_storage& a) {
    if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
    if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
    return -1;
  }

  // The peer whose address Gloo's error `text` names, or -1.
  int PeerNamedIn(const std::string& text) const {
    for (const auto& [peer, address] : peer_addresses_) {
      // The address followed by what ends it in Gloo's text (":" or the end), not a longer port.
      for (size_t at = text.find(address); at != std::string::npos; at = text.find(address, at + 1)) {
        const size_t end = at + address.size();
        if (end == text.size() || !std::isdigit(static_cast<unsigned char>(text[end]))) return peer;
      }
    }
    return -1;
  }

 private:
  std::vector<std::pair<int, std::string>> peer_addresses_;  // (rank, Gloo's name of its address)
};

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(int rank, int world_size, int local_rank, std::shared_ptr<MeshContext> context)
      : rank_(rank), world_size_(world_size), local_rank_(local_rank), context_(std::move(context)) {
    std::vector<int> peers;
    for (int r = 0; r < world_size_; ++r) {
      if (r != rank_) peers.push_back(r);
    }
    where_ = absl::StrCat(" on rank ", rank_, " of ", world_size_, " (peers ", absl::StrJoin(peers, ", "), ")");
    // Every rank listens for one failure notice from any peer for the communicator's life.
    if (world_size_ > 1) {
      // One receive per peer, each into its own bytes (one receive from any peer would take the
      // first sender only: a second failing rank's send would never complete).
      notices_ = std::make_shared<Notices>(static_cast<size_t>(world_size_));
      try {
        for (int r : peers) {
          Notices::Peer& p = notices_->peers[static_cast<size_t>(r)];
          p.in = context_->createUnboundBuffer(p.in_bytes, kNoticeBytes);
          p.in->recv(r, gloo::Slot::build(kNoticeSlotPrefix, 0));
        }
      } catch (const std::exception& e) {
        notices_.reset();  // no notices: peers then see the connections reset only
      }
    }
  }
  ~GlooCommunicator() override {
    // After a failure the transport may still write memory of a collective given up on, and its
    // pairs may be stuck on a stalled peer: leave the context (and the transport thread) to the
    // process rather than wait in its destructor. The notices' buffers go with it (a notice may
    // still arrive).
    if (!poisoned().ok()) {
      AbandonToTransport(std::move(notices_));
      AbandonToTransport(std::move(context_));
    }
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  int local_rank() const override { return local_rank_; }
  std::string backend() const override { return "gloo"; }

 protected:
  absl::Status DoAllReduce(absl::Span<double> values, ReduceOp op, absl::Time deadline) override {
    return AllReduceStaged(values, op, deadline);
  }
  absl::Status DoAllReduce(absl::Span<float> values, ReduceOp op, absl::Time deadline) override {
    return AllReduceStaged(values, op, deadline);
  }

  // Float32 and float64 gradient buffers are reduced in place (the caller leaves its buffer to
  // the transport after a failed Wait, communicator.h), under a tag of their own; the other types
  // through the default's widening, under the same tag.
  absl::StatusOr<std::unique_ptr<Pending>> DoStartAllReduce(const Buffer& b, ReduceOp op,
                                                            absl::Time deadline) override {
    if (b.on_host() && (b.dtype == DType::kFloat32 || b.dtype == DType::kFloat64)) {
      absl::Status s = b.dtype == DType::kFloat32
                           ? AllReduceInPlace(static_cast<float*>(b.data), b.count, op, kBufferTag, deadline,
                                              absl::StrCat("all-reduce of ", b.DebugString()))
                           : AllReduceInPlace(static_cast<double*>(b.data), b.count, op, kBufferTag, deadline,
                                              absl::StrCat("all-reduce of ", b.DebugString()));
      return Done(std::move(s));
    }
    reduce_tag_ = kBufferTag;
    absl::StatusOr<std::unique_ptr<Pending>> p = Communicator::DoStartAllReduce(b, op, deadline);
    reduce_tag_ = kReduceTag;
    return p;
  }

  absl::Status DoAllGather(absl::Span<const double> send, absl::Span<double> recv, absl::Time deadline) override {
    return AllGatherStaged(send, recv, kGatherTag, deadline, "all-gather");
  }

  absl::StatusOr<std::vector<int>> DoMeet(bool failed, absl::Time deadline) override {
    if (closed_) {
      return absl::UnavailableError(absl::StrCat("gloo shutdown meeting", where_,
                                                 ": skipped, this rank's connections were reset after the failure"));
    }
    const double mine = failed ? 1.0 : 0.0;
    std::vector<double> all(static_cast<size_t>(world_size_));
    if (absl::Status s = AllGatherStaged(absl::MakeConstSpan(&mine, 1), absl::MakeSpan(all), kMeetTag, deadline,
                                         "shutdown meeting");
        !s.ok()) {
      return s;
    }
    return std::vector<int>(all.begin(), all.end());
  }

  absl::Status DoBroadcast(std::string& bytes, int root, absl::Time deadline) override {
    auto size = std::make_shared<uint64_t>(bytes.size());
    if (absl::Status s = Run("broadcast (size)", deadline, size, [&](std::chrono::milliseconds timeout) {
          gloo::BroadcastOptions opts(context_);
          opts.setOutput(size.get(), 1);
          opts.setRoot(root);
          opts.setTag(TagFor(kBroadcastTag, TagType::kNone, 0));
          opts.setTimeout(timeout);
          gloo::broadcast(opts);
        });
        !s.ok()) {
      return s;
    }
    if (*size == 0) {
      bytes.clear();
      return absl::OkStatus();
    }
    // Staged (a timed-out transfer may still write it: the transport keeps it); many MiB go on 2 MiB
    // pages (base/large_buffer.h).
    auto staging = std::make_shared<std::string>();
    staging->reserve(*size);
    AdviseHugePages(staging->data(), *size);
    if (rank_ == root) {
      staging->assign(bytes);  // one pass (no zero-fill first)
    } else {
      staging->resize(*size);
    }
    if (absl::Status s = Run(absl::StrCat("broadcast of ", *size, " bytes from rank ", root), deadline, staging,
                             [&](std::chrono::milliseconds timeout) {
                               gloo::BroadcastOptions opts(context_);
                               opts.setOutput(staging->data(), staging->size());
                               opts.setRoot(root);
                               opts.setTag(TagFor(kBroadcastTag, TagType::kBytes, *size));
                               opts.setTimeout(timeout);
                               gloo::broadcast(opts);
                             });
        !s.ok()) {
      return s;
    }
    if (rank_ != root) bytes.swap(*staging);  // the root's bytes are what it sent
    return absl::OkStatus();
  }

  absl::Status DoBarrier(absl::Time deadline) override {
    return Run("barrier", deadline, nullptr, [&](std::chrono::milliseconds timeout) {
      gloo::BarrierOptions opts(context_);
      opts.setTag(TagFor(kBarrierTag, TagType::kNone, 0));
      opts.setTimeout(timeout);
      gloo::barrier(opts);
    });
  }

  // The notice of the first peer that failed, once a collective of this rank failed (a notice's
  // sender resets its connections after sending it, which is what ends a peer's wait): Gloo has no
  // way to poll a receive without failing the whole context when it has not arrived, so it is
  // looked at only then (TakeNotice).
  absl::Status ReceivedNotice() override { return peer_failure_; }

  // Sends "rank R failed: <error>" to every peer (bounded: a peer may be stalled or gone), gives
  // their transport threads a moment to read it, then resets this rank's connections: a peer
  // waiting in a collective fails at once, finds the notice and reports it.
  void DoNotifyFailure(const absl::Status& error) override {
    if (closed_) return;
    if (notices_ != nullptr) {
      const std::string text = NoticeText(error, kNoticeBytes - 4);
      const uint32_t n = static_cast<uint32_t>(text.size());
      std::memcpy(notices_->out_bytes, &n, 4);
      std::memcpy(notices_->out_bytes + 4, text.data(), text.size());
      // One send buffer per peer: a peer's lost connection fails that send only.
      std::vector<int> sending;
      for (int r = 0; r < world_size_; ++r) {
        if (r == rank_) continue;
        Notices::Peer& p = notices_->peers[static_cast<size_t>(r)];
        try {
          p.out = context_->createUnboundBuffer(notices_->out_bytes, kNoticeBytes);
          p.out->send(r, gloo::Slot::build(kNoticeSlotPrefix, 0));
          sending.push_back(r);
        } catch (const std::exception&) {  // that peer's connection is gone already
        }
      }
      const auto until = std::chrono::steady_clock::now() + kNoticeSendBudget;
      for (int r : sending) {
        const auto left =
            std::max(std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                       until - std::chrono::steady_clock::now()));
        try {
          notices_->peers[static_cast<size_t>(r)].out->waitSend(left);
        } catch (const std::exception&) {  // a peer stalled or gone: the others may have it
        }
      }
      std::this_thread::sleep_for(kNoticeReadGrace);
    }
    CloseConnections();
  }

 private:
  struct Notices {
    struct Peer {
      char in_bytes[kNoticeBytes] = {};
      std::unique_ptr<gloo::transport::UnboundBuffer> in, out;
    };
    explicit Notices(size_t world) : peers(world) {}
    std::vector<Peer> peers;  // by rank; this rank's entry is unused
    char out_bytes[kNoticeBytes] = {};
  };

  // After this rank's collective failed: the first peer's notice, if one arrived (it arrives
  // before the sender resets its connections, so before the failure it explains).
  absl::Status TakeNotice() {
    if (!peer_failure_.ok() || notices_ == nullptr) return peer_failure_;
    // The first wait that times out fails the context (Gloo), which has failed already; a receive
    // that completed before still returns at once, so the lowest rank with a notice is found.
    for (int r = 0; r < world_size_; ++r) {
      Notices::Peer& p = notices_->peers[static_cast<size_t>(r)];
      if (r == rank_ || p.in == nullptr) continue;
      try {
        if (!p.in->waitRecv(nullptr, std::chrono::milliseconds(20))) continue;
      } catch (const std::exception&) {
        continue;  // none came from that peer
      }
      uint32_t n = 0;
      std::memcpy(&n, p.in_bytes, 4);
      n = std::min<uint32_t>(n, kNoticeBytes - 4);
      peer_failure_ = PeerFailure(r, std::string(p.in_bytes + 4, n));
      return peer_failure_;
    }
    return absl::OkStatus();
  }

  // Resets every connection of this rank (once): a peer waiting on one fails at once.
  void CloseConnections() {
    if (closed_) return;
    closed_ = true;
    context_->Reset();
  }

  class DonePending final : public Pending {
   public:
    explicit DonePending(absl::Status s) : s_(std::move(s)) {}
    absl::Status Wait() override { return s_; }

   private:
    absl::Status s_;
  };
  static std::unique_ptr<Pending> Done(absl::Status s) { return std::make_unique<DonePending>(std::move(s)); }

  // Runs one Gloo collective with the time left to `deadline` as its timeout. On failure,
  // `memory` (what the transport may still write) goes to AbandonToTransport.
  template <typename F>
  absl::Status Run(const std::string& what, absl::Time deadline, std::shared_ptr<const void> memory, F&& f) {
    if (closed_) {  // not reached: a communicator whose connections were reset is poisoned
      return absl::UnavailableError(absl::StrCat("gloo ", what, where_, ": this rank's connections were reset"));
    }
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) {
      return absl::DeadlineExceededError(absl::StrCat("gloo ", what, where_, ": the deadline had passed before it started"));
    }
    try {
      f(std::chrono::milliseconds(left_ms));
      return absl::OkStatus();
    } catch (const std::exception& e) {
      if (memory != nullptr) AbandonToTransport(std::move(memory));
      const std::string text = e.what();
      // A peer that gave up on the same stall at its own deadline (a few milliseconds before this
      // rank's) closes its connections as Gloo does after a timeout: so a connection lost within
      // the last tenth of the time (at most 500 ms) before the deadline counts as the deadline.
      const absl::Duration margin = std::min(absl::Milliseconds(500), absl::Milliseconds(left_ms) / 10);
      const bool timed_out = absl::Now() >= deadline - margin || text.find("Timed out") != std::string::npos;
      // A peer that failed sent its notice before resetting its connections (DoNotifyFailure).
      if (absl::Status notice = TakeNotice(); !notice.ok()) {
        CloseConnections();  // so that a peer waiting on this rank learns it too
        return WhileWaiting(notice, absl::StrCat("gloo ", what, where_));
      }
      if (timed_out) {
        CloseConnections();  // Gloo has failed the context; the peers time out or see the reset
        return absl::DeadlineExceededError(absl::StrCat(
            "gloo ", what, where_, ": not every rank joined before the deadline (a rank stalled, died or is running a "
            "different collective): ", text));
      }
      // Every peer sees the lost connection (or this rank's reset) by itself: no notice, which
      // would name this rank as the one that failed. The rank at the other end is named: the one
      // that died, or a survivor that closed its connections on seeing a loss of its own.
      CloseConnections();
      const int peer = context_->PeerNamedIn(text);
      if (peer < 0) return absl::UnavailableError(absl::StrCat("gloo ", what, where_, ": ", text));
      return absl::UnavailableError(absl::StrCat("gloo ", what, where_, ": the connection to rank ", peer,
                                                 " was lost (rank ", peer,
                                                 " died, or closed it on a failure it saw first): ", text));
    }
  }

  template <typename T>
  static void Reduce(void* c_, const void* a_, const void* b_, size_t n, ReduceOp op) {
    T* c = static_cast<T*>(c_);
    const T* a = static_cast<const T*>(a_);
    const T* b = static_cast<const T*>(b_);
    switch (op) {
      case ReduceOp::kSum:
        for (size_t i = 0; i < n; ++i) c[i] = a[i] + b[i];
        break;
      case ReduceOp::kMin:
        for (size_t i = 0; i < n; ++i) c[i] = std::min(a[i], b[i]);
        break;
      case ReduceOp::kMax:
        for (size_t i = 0; i < n; ++i) c[i] = std::max(a[i], b[i]);
        break;
    }
  }

  template <typename T>
  absl::Status AllReduceInPlace(T* data, size_t count, ReduceOp op, uint32_t tag, absl::Time deadline,
                                const std::string& what, std::shared_ptr<const void> memory = nullptr) {
    if (count == 0) return absl::OkStatus();
    return Run(absl::StrCat(what, " (", ReduceOpName(op), ")"), deadline, std::move(memory),
               [&](std::chrono::milliseconds timeout) {
                 gloo::AllreduceOptions opts(context_);
                 opts.setOutput(data, count);
                 opts.setReduceFunction([op](void* c, const void* a, const void* b, size_t n) {
                   Reduce<T>(c, a, b, n, op);
                 });
                 opts.setTag(TagFor(tag, TypeOf<T>(), count));
                 opts.setTimeout(timeout);
                 gloo::allreduce(opts);
               });
  }

  template <typename T>
  absl::Status AllReduceStaged(absl::Span<T> values, ReduceOp op, absl::Time deadline) {
    auto staging = std::make_shared<std::vector<T>>(values.begin(), values.end());
    absl::Status s = AllReduceInPlace(staging->data(), staging->size(), op, reduce_tag_, deadline,
                                      absl::StrCat("all-reduce of ", values.size(),
                                                   std::is_same_v<T, double> ? " float64" : " float32"),
                                      staging);
    if (!s.ok()) return s;
    std::copy(staging->begin(), staging->end(), values.begin());
    return absl::OkStatus();
  }

  absl::Status AllGatherStaged(absl::Span<const double> send, absl::Span<double> recv, uint32_t tag,
                               absl::Time deadline, const char* what) {
    if (send.empty()) return absl::OkStatus();
    struct Staging {
      std::vector<double> send, recv;
    };
    auto staging = std::make_shared<Staging>(Staging{{send.begin(), send.end()}, std::vector<double>(recv.size())});
    absl::Status s = Run(absl::StrCat(what, " of ", send.size(), " float64 per rank"), deadline, staging,
                         [&](std::chrono::milliseconds timeout) {
                           gloo::AllgatherOptions opts(context_);
                           opts.setInput(staging->send.data(), staging->send.size());
                           opts.setOutput(staging->recv.data(), staging->recv.size());
                           opts.setTag(TagFor(tag, TagType::kFloat64, staging->send.size(),
                                              staging->recv.size()));
                           opts.setTimeout(timeout);
                           gloo::allgather(opts);
                         });
    if (!s.ok()) return s;
    std::copy(staging->recv.begin(), staging->recv.end(), recv.begin());
    return absl::OkStatus();
  }

  const int rank_;
  const int world_size_;
  const int local_rank_;
  std::shared_ptr<MeshContext> context_;
  std::string where_;
  uint32_t reduce_tag_ = kReduceTag;
  std::shared_ptr<Notices> notices_;
  absl::Status peer_failure_;
  bool closed_ = false;  // connections reset (after this rank's failure or a peer's)
};

}  // namespace

bool GlooBuilt() { return true; }

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(const GlooOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("gloo: rank ", options.rank, " of ", options.world_size, ": not a rank of the world"));
  }
  if (options.world_size > 1 && !options.exchange) {
    return absl::InvalidArgumentError("gloo: several ranks need an address exchange (GlooOptions::exchange)");
  }
  const absl::Time deadline = absl::Now() + options.init_timeout;
  gloo::transport::tcp::attr attr;
  if (!options.iface.empty()) {
    attr.iface = options.iface;
  } else if (!options.hostname.empty()) {
    attr.hostname = options.hostname;
  } else if (options.loopback) {
    attr.hostname = "127.0.0.1";
  } else {
    char name[256] = {};
    if (::gethostname(name, sizeof(name) - 1) != 0) std::strcpy(name, "127.0.0.1");
    attr.hostname = name;
  }
  std::shared_ptr<gloo::transport::Device> device;
  try {
    device = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("gloo: rank ", options.rank, ": no TCP device on ",
                                               attr.iface.empty() ? "host " + attr.hostname : "interface " + attr.iface,
                                               ": ", e.what()));
  }
  auto context = std::make_shared<MeshContext>(options.rank, options.world_size);
  const AddressExchange single = [](const std::string& mine, absl::Time) -> absl::StatusOr<std::vector<std::string>> {
    return std::vector<std::string>{mine};
  };
  absl::Status s = context->Connect(device, options.world_size > 1 ? options.exchange : single, deadline);
  if (!s.ok()) {
    // Pairs half connected may still be touched by the transport thread: leave them be.
    AbandonToTransport(std::move(context));
    return absl::Status(s.code(), absl::StrCat("gloo: rank ", options.rank, " of ", options.world_size,
                                               ": connecting the ranks: ", s.message(), " (this rank listened on ",
                                               attr.iface.empty() ? "host " + attr.hostname : "interface " + attr.iface,
                                               "; GLOO_SOCKET_IFNAME chooses the interface)"));
  }
  return std::unique_ptr<Communicator>(
      new GlooCommunicator(options.rank, options.world_size, options.local_rank, std::move(context)));
}

}  // namespace ember::dist
