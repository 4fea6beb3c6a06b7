#include "distributed/gloo_communicator.h"

#include <unistd.h>

#include <algorithm>
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
#include "gloo/transport/tcp/attr.h"
#include "gloo/transport/tcp/device.h"

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

  absl::Status Connect(std::shared_ptr<gloo::transport::Device> device, const AddressExchange& exchange,
                       absl::Time deadline) {
    const auto timeout = std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(deadline - absl::Now())));
    device_ = std::move(device);
    transportContext_ = device_->createContext(rank, size);
    transportContext_->setTimeout(timeout);
    setTimeout(timeout);
    // This rank's table: for each peer, a 4-byte length and the address of the pair to it.
    std::string mine;
    for (int i = 0; i < size; ++i) {
      if (i == rank) continue;
      std::vector<char> bytes = transportContext_->createPair(i)->address().bytes();
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
    }
    return absl::OkStatus();
  }
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
  }
  ~GlooCommunicator() override {
    // After a failure the transport may still write memory of a collective given up on, and its
    // pairs may be stuck on a stalled peer: leave the context (and the transport thread) to the
    // process rather than wait in its destructor.
    if (!poisoned().ok()) AbandonToTransport(std::move(context_));
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

 private:
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
      if (absl::Now() >= deadline - margin || text.find("Timed out") != std::string::npos) {
        return absl::DeadlineExceededError(absl::StrCat(
            "gloo ", what, where_, ": not every rank joined before the deadline (a rank stalled, died or is running a "
            "different collective): ", text));
      }
      return absl::UnavailableError(absl::StrCat("gloo ", what, where_, ": ", text));
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
