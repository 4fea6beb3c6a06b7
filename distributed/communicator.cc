#include "distributed/communicator.h"

#include <cstdlib>
#include <cstring>
#include <strings.h>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/mutex.h"

namespace ember::dist {

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "SUM";
    case ReduceOp::kMin:
      return "MIN";
    case ReduceOp::kMax:
      return "MAX";
  }
  return "?";
}

template <typename F>
absl::Status Communicator::Guard(const char* what, F&& f) {
  if (!poison_.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " on a communicator poisoned by an earlier error: ", poison_.message()));
  }
  collectives_.fetch_add(1, std::memory_order_relaxed);
  if (world_size() == 1) {  // nothing to wait for: keep the clock reads off the per-event path
    absl::Status s = f();
    if (!s.ok()) CollectiveFailed(s);
    return s;
  }
  const absl::Time start = absl::Now();
  absl::Status s = f();
  AddCollectiveTime(absl::Now() - start);
  if (!s.ok()) CollectiveFailed(s);
  return s;
}

namespace {

struct Abandoned {
  Mutex mu;
  std::vector<std::shared_ptr<const void>> memory ABSL_GUARDED_BY(mu);
};

Abandoned& AbandonedMemory() {
  static Abandoned* const abandoned = new Abandoned();  // never destroyed: MPI may write it at exit
  return *abandoned;
}

}  // namespace

void AbandonToTransport(std::shared_ptr<const void> memory) {
  if (memory == nullptr) return;
  Abandoned& a = AbandonedMemory();
  MutexLock lock(&a.mu);
  a.memory.push_back(std::move(memory));
}

int64_t AbandonedToTransport() {
  Abandoned& a = AbandonedMemory();
  MutexLock lock(&a.mu);
  return static_cast<int64_t>(a.memory.size());
}

namespace {
constexpr char kPeerFailureUrl[] = "type.ember.dev/dist.PeerFailure";
}  // namespace

void Communicator::Notify(const absl::Status& error) {
  if (notified_ || world_size() == 1) return;
  notified_ = true;
  DoNotifyFailure(error);
}

void Communicator::Poison(absl::Status error) {
  if (!poison_.ok() || error.ok()) return;
  poison_ = std::move(error);
  // A missed deadline is not news: the peers wait on the same stalled rank, each with its own
  // deadline, and each reports it itself. Nor is a transport failure (CollectiveFailed).
  if (!IsPeerFailure(poison_) && poison_.code() != absl::StatusCode::kDeadlineExceeded &&
      (!broken_ || IsLocalFault(poison_))) {
    Notify(poison_);
  }
}

void Communicator::Fail(absl::Status error) {
  if (!poison_.ok() || error.ok()) return;
  poison_ = std::move(error);
  if (IsPeerFailure(poison_)) return;  // not this rank's own: never sent on
  failed_locally_ = true;
  Notify(poison_);
}

void Communicator::TellPeers(absl::Status error) {
  if (error.ok() || IsPeerFailure(error) || IsPeerFailure(poison_)) return;
  if (poison_.ok()) {
    Fail(std::move(error));
    return;
  }
  Notify(error);
}

namespace {
constexpr char kLocalFaultUrl[] = "type.ember.dev/dist.LocalFault";
}  // namespace

absl::Status Communicator::LocalFault(absl::Status error) {
  if (!error.ok()) error.SetPayload(kLocalFaultUrl, absl::Cord("1"));
  return error;
}

bool Communicator::IsLocalFault(const absl::Status& error) { return error.GetPayload(kLocalFaultUrl).has_value(); }

bool Communicator::IsPeerFailure(const absl::Status& error) {
  return error.GetPayload(kPeerFailureUrl).has_value();
}

absl::Status Communicator::PeerFailure(int rank, absl::string_view message) {
  absl::Status s = absl::AbortedError(absl::StrCat("rank ", rank, " failed: ", message));
  s.SetPayload(kPeerFailureUrl, absl::Cord(absl::StrCat(rank)));
  return s;
}

std::string Communicator::NoticeText(const absl::Status& error, size_t max_bytes) {
  std::string text = absl::StrCat(absl::StatusCodeToString(error.code()), ": ", error.message());
  if (text.size() <= max_bytes) return text;
  // A UTF-8 continuation byte is 10xxxxxx: a cut never leaves one at either edge.
  auto continuation = [&](size_t i) { return (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80; };
  const size_t marker_room = 40;  // " [... 123456789 bytes cut ...] "
  const size_t keep = max_bytes > marker_room ? max_bytes - marker_room : 0;
  size_t head = keep * 2 / 3;
  while (head > 0 && continuation(head)) --head;
  size_t tail_start = text.size() - (keep - head);
  while (tail_start < text.size() && continuation(tail_start)) ++tail_start;
  std::string out = text.substr(0, head);
  absl::StrAppend(&out, " [... ", tail_start - head, " bytes cut ...] ", absl::string_view(text).substr(tail_start));
  if (out.size() > max_bytes) out.resize(max_bytes);  // max_bytes below the marker's room
  return out;
}

absl::Status Communicator::WithMessage(const absl::Status& error, absl::string_view message) {
  absl::Status s(error.code(), message);
  error.ForEachPayload([&s](absl::string_view url, const absl::Cord& payload) { s.SetPayload(url, payload); });
  return s;
}

absl::Status Communicator::WhileWaiting(const absl::Status& notice, absl::string_view what) {
  return WithMessage(notice, absl::StrCat(notice.message(), " (while this rank waited in ", what, ")"));
}

void Communicator::CollectiveFailed(absl::Status error) {
  if (error.ok()) return;
  if (poison_.ok()) {
    switch (error.code()) {
      case absl::StatusCode::kInternal:
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kUnknown:
        broken_ = true;
        break;
      default:
        break;
    }
  }
  Poison(std::move(error));
}

bool Communicator::may_meet() const {
  return !broken_ && (failed_locally_ || poison_.code() != absl::StatusCode::kDeadlineExceeded);
}

absl::StatusOr<std::vector<int>> Communicator::DoMeet(bool failed, absl::Time deadline) {
  const double mine = failed ? 1.0 : 0.0;
  std::vector<double> all(static_cast<size_t>(world_size()));
  absl::Status s = DoAllGather(absl::MakeConstSpan(&mine, 1), absl::MakeSpan(all), deadline);
  if (!s.ok()) return s;
  std::vector<int> flags;
  for (double v : all) flags.push_back(v != 0 ? 1 : 0);
  return flags;
}

absl::Status Communicator::Meet(absl::Time deadline) {
  if (world_size() == 1) return poison_;
  if (!may_meet()) return poison_;
  absl::StatusOr<std::vector<int>> flags = DoMeet(!poison_.ok(), deadline);
  if (!flags.ok()) {
    CollectiveFailed(absl::Status(flags.status().code(), absl::StrCat("shutdown meeting: ", flags.status().message())));
    broken_ = true;  // no second meeting
    return poison_;
  }
  std::vector<int> failed;
  for (int r = 0; r < static_cast<int>(flags->size()); ++r) {
    if ((*flags)[static_cast<size_t>(r)] != 0 && r != rank()) failed.push_back(r);
  }
  if (failed.empty() || !poison_.ok()) return poison_;
  // This rank finished; others failed (their notices may not have reached a collective here).
  absl::Status notice = ReceivedNotice();
  std::string ranks;
  for (int r : failed) absl::StrAppend(&ranks, ranks.empty() ? "" : ", ", r);
  Poison(!notice.ok() ? notice
                      : PeerFailure(failed[0], absl::StrCat("(rank(s) ", ranks,
                                                            " reported a failure at the shutdown meeting)")));
  return poison_;
}

namespace {

// A collective that completed before StartAllReduce returned.
class DonePending final : public Pending {
 public:
  explicit DonePending(absl::Status s) : status_(std::move(s)) {}
  absl::Status Wait() override { return status_; }

 private:
  absl::Status status_;
};

// What StartAllReduce hands out: waits once, poisons the communicator on failure.
class GuardedPending final : public Pending {
 public:
  GuardedPending(std::unique_ptr<Pending> inner, Communicator* comm) : inner_(std::move(inner)), comm_(comm) {}
  ~GuardedPending() override { Wait().IgnoreError(); }
  absl::Status Wait() override {
    if (inner_ != nullptr) {
      const absl::Time start = absl::Now();
      status_ = inner_->Wait();
      comm_->AddCollectiveTime(absl::Now() - start);
      inner_.reset();
      if (!status_.ok()) comm_->CollectiveFailed(status_);
    }
    return status_;
  }

 private:
  std::unique_ptr<Pending> inner_;
  Communicator* comm_;
  absl::Status status_;
};

// Widens a host buffer of `From` into `To`, reduces it with `reduce`, narrows it back.
template <typename To, typename From, typename Widen, typename Narrow, typename Reduce>
absl::Status ReduceWidened(const Buffer& b, Widen widen, Narrow narrow, Reduce reduce) {
  From* p = static_cast<From*>(b.data);
  std::vector<To> wide(b.count);
  for (size_t i = 0; i < b.count; ++i) wide[i] = widen(p[i]);
  absl::Status s = reduce(absl::MakeSpan(wide));
  if (!s.ok()) return s;
  for (size_t i = 0; i < b.count; ++i) p[i] = narrow(wide[i]);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Pending>> Communicator::DoStartAllReduce(const Buffer& b, ReduceOp op,
                                                                        absl::Time deadline) {
  if (!b.on_host()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AllReduce of ", b.DebugString(), ": the ", backend(),
        " backend reduces host buffers only; copy it to the host, or use the nccl backend"));
  }
  auto reduce_d = [&](absl::Span<double> v) { return DoAllReduce(v, op, deadline); };
  auto reduce_f = [&](absl::Span<float> v) { return DoAllReduce(v, op, deadline); };
  absl::Status s;
  switch (b.dtype) {
    case DType::kFloat32:
      s = reduce_f(absl::MakeSpan(static_cast<float*>(b.data), b.count));
      break;
    case DType::kFloat64:
      s = reduce_d(absl::MakeSpan(static_cast<double*>(b.data), b.count));
      break;
    case DType::kInt64:
      s = ReduceWidened<double, int64_t>(
          b, [](int64_t x) { return static_cast<double>(x); }, [](double x) { return static_cast<int64_t>(x); },
          reduce_d);
      break;
    case DType::kFloat16:
      s = ReduceWidened<float, uint16_t>(b, HalfToFloat, FloatToHalf, reduce_f);
      break;
    case DType::kBFloat16:
      s = ReduceWidened<float, uint16_t>(b, BFloat16ToFloat, FloatToBFloat16, reduce_f);
      break;
  }
  return std::unique_ptr<Pending>(new DonePending(std::move(s)));
}

namespace {

enum FingerprintKind { kFpAllReduce = 1, kFpStartAllReduce, kFpAllGather, kFpBroadcast, kFpBarrier };
constexpr size_t kFingerprint = 5;
constexpr int kNoType = -1;

std::string DescribeFingerprint(const double* f) {
  static const char* const kKinds[] = {"?", "AllReduce", "StartAllReduce", "AllGather", "Broadcast", "Barrier"};
  const int kind = static_cast<int>(f[0]);
  const int dtype = static_cast<int>(f[3]);
  const int op = static_cast<int>(f[4]);
  std::string out = kind >= 1 && kind <= 5 ? kKinds[kind] : "?";
  if (kind == kFpBroadcast) return absl::StrCat(out, " from rank ", op);
  if (kind == kFpBarrier) return out;
  absl::StrAppend(&out, " of ", static_cast<uint64_t>(f[2]), " ",
                  dtype == kNoType ? "values" : DTypeName(static_cast<DType>(dtype)));
  if (kind != kFpAllGather) absl::StrAppend(&out, " (", ReduceOpName(static_cast<ReduceOp>(op)), ")");
  return out;
}

}  // namespace

bool Communicator::StrictFromEnvironment() {
  const char* v = std::getenv("EMBER_DISTRIBUTED_DEBUG");
  return v != nullptr && strcasecmp(v, "DETAIL") == 0;
}

absl::Status Communicator::CheckFingerprint(int kind, uint64_t count, int dtype, int op, absl::Time deadline) {
  if (!poison_.ok() || world_size() == 1) return absl::OkStatus();  // the collective itself says so
  const double mine[kFingerprint] = {static_cast<double>(kind), static_cast<double>(strict_seq_++),
                                     static_cast<double>(count), static_cast<double>(dtype), static_cast<double>(op)};
  std::vector<double> all(kFingerprint * static_cast<size_t>(world_size()));
  absl::Status s = DoAllGather(absl::MakeConstSpan(mine, kFingerprint), absl::MakeSpan(all), deadline);
  if (!s.ok()) {
    CollectiveFailed(absl::Status(s.code(), absl::StrCat("strict mode's fingerprint exchange: ", s.message())));
    return poison_;
  }
  std::vector<std::string> sides;
  bool differs = false;
  for (int r = 0; r < world_size(); ++r) {
    const double* f = all.data() + static_cast<size_t>(r) * kFingerprint;
    if (std::memcmp(f, all.data(), kFingerprint * sizeof(double)) != 0) differs = true;
  }
  if (!differs) return absl::OkStatus();
  for (int r = 0; r < world_size(); ++r) {
    const double* f = all.data() + static_cast<size_t>(r) * kFingerprint;
    sides.push_back(absl::StrCat("rank ", r, " ", DescribeFingerprint(f), " (#", static_cast<uint64_t>(f[1]), ")"));
  }
  absl::Status error = absl::FailedPreconditionError(absl::StrCat(
      "collective #", strict_seq_ - 1, " differs across ranks (EMBER_DISTRIBUTED_DEBUG=DETAIL): ",
      absl::StrJoin(sides, "; "), ". Every rank must issue the same collectives in the same order"));
  PoisonDetectedEverywhere(error);
  return error;
}

absl::StatusOr<std::unique_ptr<Pending>> Communicator::StartAllReduce(const Buffer& buffer, ReduceOp op,
                                                                      absl::Time deadline) {
  if (buffer.data == nullptr && buffer.count > 0) {
    return absl::InvalidArgumentError(absl::StrCat("StartAllReduce: ", buffer.DebugString(), " has no data"));
  }
  if (!buffer.on_host() && !device_buffers()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AllReduce of ", buffer.DebugString(), ": the ", backend(),
        " backend reduces host buffers only; copy it to the host, or use the nccl backend"));
  }
  if (strict_) {
    if (absl::Status fp = CheckFingerprint(kFpStartAllReduce, buffer.count, static_cast<int>(buffer.dtype),
                                           static_cast<int>(op), deadline); !fp.ok()) return fp;
  }
  std::unique_ptr<Pending> inner;
  absl::Status started = Guard("StartAllReduce", [&]() -> absl::Status {
    absl::StatusOr<std::unique_ptr<Pending>> p = DoStartAllReduce(buffer, op, deadline);
    if (!p.ok()) return p.status();
    inner = *std::move(p);
    return absl::OkStatus();
  });
  if (!started.ok()) return started;
  return std::unique_ptr<Pending>(new GuardedPending(std::move(inner), this));
}

absl::Status Communicator::AllReduce(const Buffer& buffer, ReduceOp op, absl::Time deadline) {
  if (!buffer.on_host() || world_size() == 1) {
    absl::StatusOr<std::unique_ptr<Pending>> p = StartAllReduce(buffer, op, deadline);
    if (!p.ok()) return p.status();
    return (*p)->Wait();
  }
  // The caller's memory is not ours to leave to the transport if the wait fails (communicator.h):
  // the all-reduce runs on a copy, which a failed wait abandons, and the result is copied back.
  auto staging = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(buffer.data),
                                                              static_cast<const unsigned char*>(buffer.data) +
                                                                  buffer.bytes());
  Buffer staged = buffer;
  staged.data = staging->data();
  absl::StatusOr<std::unique_ptr<Pending>> p = StartAllReduce(staged, op, deadline);
  if (!p.ok()) return p.status();
  if (absl::Status s = (*p)->Wait(); !s.ok()) {
    AbandonToTransport(std::move(staging));
    return s;
  }
  std::memcpy(buffer.data, staging->data(), buffer.bytes());
  return absl::OkStatus();
}

absl::Status Communicator::AllReduce(absl::Span<double> values, ReduceOp op, absl::Time deadline) {
  if (strict_) {
    if (absl::Status fp = CheckFingerprint(kFpAllReduce, values.size(), static_cast<int>(DType::kFloat64),
                                           static_cast<int>(op), deadline); !fp.ok()) return fp;
  }
  return Guard("AllReduce", [&] { return DoAllReduce(values, op, deadline); });
}

absl::Status Communicator::AllReduce(absl::Span<float> values, ReduceOp op, absl::Time deadline) {
  if (strict_) {
    if (absl::Status fp = CheckFingerprint(kFpAllReduce, values.size(), static_cast<int>(DType::kFloat32),
                                           static_cast<int>(op), deadline); !fp.ok()) return fp;
  }
  return Guard("AllReduce", [&] { return DoAllReduce(values, op, deadline); });
}

absl::Status Communicator::AllGather(absl::Span<const double> send, absl::Span<double> recv,
                                     absl::Time deadline) {
  if (recv.size() != send.size() * static_cast<size_t>(world_size())) {
    return absl::InvalidArgumentError(absl::StrCat("AllGather: recv holds ", recv.size(),
                                                   " values, expected world_size * send = ",
                                                   world_size() * send.size()));
  }
  if (strict_) {
    if (absl::Status fp = CheckFingerprint(kFpAllGather, send.size(), static_cast<int>(DType::kFloat64), 0, deadline); !fp.ok()) return fp;
  }
  return Guard("AllGather", [&] { return DoAllGather(send, recv, deadline); });
}

absl::Status Communicator::Broadcast(std::string& bytes, int root, absl::Time deadline) {
  if (root < 0 || root >= world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Broadcast: root ", root, " is not a rank of a world of ", world_size()));
  }
  if (strict_) if (absl::Status fp = CheckFingerprint(kFpBroadcast, 0, kNoType, root, deadline); !fp.ok()) return fp;
  return Guard("Broadcast", [&] { return DoBroadcast(bytes, root, deadline); });
}

absl::Status Communicator::Barrier(absl::Time deadline) {
  if (strict_) if (absl::Status fp = CheckFingerprint(kFpBarrier, 0, kNoType, 0, deadline); !fp.ok()) return fp;
  return Guard("Barrier", [&] { return DoBarrier(deadline); });
}

}  // namespace ember::dist
