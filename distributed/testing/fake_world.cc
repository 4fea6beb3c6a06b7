#include "distributed/testing/fake_world.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ember::dist::testing {
namespace {

std::string Pack(const void* data, size_t bytes) {
  return std::string(static_cast<const char*>(data), bytes);
}

template <typename T>
void Reduce(absl::Span<T> values, ReduceOp op, const std::vector<std::string>& all) {
  for (size_t i = 0; i < values.size(); ++i) {
    T acc;
    std::memcpy(&acc, all[0].data() + i * sizeof(T), sizeof(T));
    for (size_t r = 1; r < all.size(); ++r) {
      T v;
      std::memcpy(&v, all[r].data() + i * sizeof(T), sizeof(T));
      switch (op) {
        case ReduceOp::kSum:
          acc += v;
          break;
        case ReduceOp::kMin:
          acc = std::min(acc, v);
          break;
        case ReduceOp::kMax:
          acc = std::max(acc, v);
          break;
      }
    }
    values[i] = acc;
  }
}

class FakeCommunicator final : public Communicator {
 public:
  FakeCommunicator(FakeWorld* world, int rank, int local_rank)
      : world_(world), rank_(rank), local_rank_(local_rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_->world_size(); }
  int local_rank() const override { return local_rank_; }
  std::string backend() const override { return "fake"; }

 protected:
  absl::Status DoAllReduce(absl::Span<double> v, ReduceOp op, absl::Time deadline) override {
    return ReduceImpl(v, op, deadline);
  }
  absl::Status DoAllReduce(absl::Span<float> v, ReduceOp op, absl::Time deadline) override {
    return ReduceImpl(v, op, deadline);
  }
  // Host buffers reduce through DoAllReduce (the base class), on the gradient buffers' channel.
  absl::StatusOr<std::unique_ptr<Pending>> DoStartAllReduce(const Buffer& buffer, ReduceOp op,
                                                            absl::Time deadline) override {
    reduce_channel_ = FakeWorld::kBuffers;
    auto p = Communicator::DoStartAllReduce(buffer, op, deadline);
    reduce_channel_ = FakeWorld::kReduce;
    return p;
  }
  void DoNotifyFailure(const absl::Status& error) override {
    world_->Notify(rank_, absl::StrCat(absl::StatusCodeToString(error.code()), ": ", error.message()));
  }
  absl::StatusOr<std::vector<int>> DoMeet(bool failed, absl::Time deadline) override {
    auto all = Next(FakeWorld::kControl, failed ? "1" : "0", deadline);
    if (!all.ok()) return all.status();
    std::vector<int> flags;
    for (const std::string& p : *all) flags.push_back(p == "1" ? 1 : 0);
    return flags;
  }
  absl::Status ReceivedNotice() override { return world_->NoticeFor(rank_); }
  absl::Status DoAllGather(absl::Span<const double> send, absl::Span<double> recv,
                           absl::Time deadline) override {
    auto all = Next(FakeWorld::kGather, Pack(send.data(), send.size() * sizeof(double)), deadline);
    if (!all.ok()) return all.status();
    for (const std::string& p : *all) {
      if (p.size() != send.size() * sizeof(double)) {
        return absl::InvalidArgumentError("AllGather: ranks passed buffers of different sizes");
      }
    }
    for (size_t r = 0; r < all->size(); ++r) {
      std::memcpy(recv.data() + r * send.size(), (*all)[r].data(), send.size() * sizeof(double));
    }
    return absl::OkStatus();
  }
  absl::Status DoBroadcast(std::string& bytes, int root, absl::Time deadline) override {
    auto all = Next(FakeWorld::kBroadcast, rank_ == root ? bytes : std::string(), deadline);
    if (!all.ok()) return all.status();
    bytes = (*all)[root];
    return absl::OkStatus();
  }
  absl::Status DoBarrier(absl::Time deadline) override {
    return Next(FakeWorld::kBarrier, std::string(), deadline).status();
  }

 private:
  template <typename T>
  absl::Status ReduceImpl(absl::Span<T> v, ReduceOp op, absl::Time deadline) {
    auto all = Next(reduce_channel_, Pack(v.data(), v.size() * sizeof(T)), deadline);
    if (!all.ok()) return all.status();
    for (const std::string& p : *all) {
      if (p.size() != v.size() * sizeof(T)) {
        return absl::InvalidArgumentError("AllReduce: ranks passed buffers of different sizes");
      }
    }
    Reduce(v, op, *all);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> Next(FakeWorld::Channel channel, std::string payload,
                                                absl::Time deadline) {
    return world_->Exchange(rank_, channel, seq_[channel]++, std::move(payload), deadline);
  }

  FakeWorld* world_;
  int rank_;
  int local_rank_;
  FakeWorld::Channel reduce_channel_ = FakeWorld::kReduce;
  int64_t seq_[FakeWorld::kChannels] = {};
};

}  // namespace

FakeWorld::FakeWorld(int world_size, int ranks_per_host)
    : world_size_(world_size), stalled_(world_size, false), killed_(world_size, false) {
  const int per_host = ranks_per_host > 0 ? ranks_per_host : world_size;
  for (int r = 0; r < world_size; ++r) {
    comms_.push_back(std::make_unique<FakeCommunicator>(this, r, r % per_host));
  }
}

FakeWorld::~FakeWorld() {
  MutexLock lock(&mu_);
  shutting_down_ = true;
  cv_.SignalAll();
}

void FakeWorld::Stall(int rank) {
  MutexLock lock(&mu_);
  stalled_[rank] = true;
}

void FakeWorld::Kill(int rank) {
  MutexLock lock(&mu_);
  killed_[rank] = true;
  cv_.SignalAll();
}

void FakeWorld::Notify(int rank, std::string text) {
  MutexLock lock(&mu_);
  if (killed_[rank]) return;  // a dead process tells nobody: its peers find out at their deadline
  for (const auto& n : notices_) {
    if (n.first == rank) return;
  }
  notices_.emplace_back(rank, std::move(text));
  cv_.SignalAll();
}

absl::Status FakeWorld::NoticeFor(int rank) {
  MutexLock lock(&mu_);
  return NoticeForLocked(rank);
}

absl::Status FakeWorld::NoticeForLocked(int rank) {
  for (const auto& n : notices_) {
    if (n.first != rank) return Communicator::PeerFailure(n.first, n.second);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> FakeWorld::Exchange(int rank, Channel channel, int64_t seq,
                                                             std::string payload,
                                                             absl::Time deadline) {
  MutexLock lock(&mu_);
  if (killed_[rank]) return absl::UnavailableError(absl::StrCat("rank ", rank, " was killed"));
  const bool watch = channel != kControl;
  if (stalled_[rank]) {
    while (!shutting_down_) cv_.Wait(&mu_);
    return absl::AbortedError(absl::StrCat("rank ", rank, " was stalled"));
  }
  const std::pair<int, int64_t> key(channel, seq);
  Round& round = rounds_[key];
  if (round.payloads.empty()) round.payloads.resize(world_size_);
  round.payloads[rank] = std::move(payload);
  cv_.SignalAll();
  auto complete = [&] {
    for (const auto& p : round.payloads) {
      if (!p) return false;
    }
    return true;
  };
  while (!complete()) {
    if (watch) {
      if (absl::Status notice = NoticeForLocked(rank); !notice.ok()) return notice;
    }
    if (cv_.WaitWithDeadline(&mu_, deadline) && !complete()) {
      std::vector<int> missing;
      for (int r = 0; r < world_size_; ++r) {
        if (!round.payloads[r]) missing.push_back(r);
      }
      return absl::DeadlineExceededError(
          absl::StrCat("collective #", seq, ": rank(s) ", absl::StrJoin(missing, ", "),
                       " did not join before the deadline"));
    }
  }
  std::vector<std::string> out;
  for (const auto& p : round.payloads) out.push_back(*p);
  if (++round.readers == world_size_) rounds_.erase(key);
  return out;
}

}  // namespace ember::dist::testing
