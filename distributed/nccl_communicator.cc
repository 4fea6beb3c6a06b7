// The NCCL backend (built when the build found NCCL; see nccl_communicator.h).
#include "distributed/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "absl/time/clock.h"
#include "base/large_buffer.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "distributed/file_rendezvous.h"
#include "distributed/tcp_notices.h"
#include "distributed/tcp_rendezvous.h"

namespace ember::dist {
namespace {

// A CUDA error is this rank's own (its kernels, its device): the peers are told of it
// (Communicator::LocalFault), although its code is kInternal, a transport's.
absl::Status CudaError(const char* what, cudaError_t e) {
  return Communicator::LocalFault(absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e))));
}

// An NCCL error: an invalid call or a CUDA error under NCCL is this rank's own fault (told to the
// peers); a system, internal or remote error is the transport's (each rank sees its own).
absl::Status NcclError(const char* what, ncclResult_t r) {
  absl::Status s = absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
  if (r == ncclInvalidArgument || r == ncclInvalidUsage || r == ncclUnhandledCudaError) {
    return Communicator::LocalFault(std::move(s));
  }
  return s;
}

ncclRedOp_t ToNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kMax:
      return ncclMax;
  }
  return ncclSum;
}

// Staging buffers up to this size stay allocated between collectives (the per-event consensus
// values, small broadcasts); larger ones are released after the collective that needed them.
constexpr size_t kStagingKeptBytes = size_t{1} << 20;

class NcclCommunicator final : public Communicator {
 public:
  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (poisoned().ok() && !aborted_) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    // At the end only: cudaFree synchronises the device, and the communicator is gone by now.
    if (device_buffer_ != nullptr) cudaFree(device_buffer_);
    if (pinned_ != nullptr) cudaFreeHost(pinned_);
    if (staged_done_ != nullptr) cudaEventDestroy(staged_done_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Start-up failures of this rank's own are told, not left to the peers' init timeout. A rank
  // whose start failed (no device, a CUDA call, ncclGetUniqueId) logs it at once, then still
  // takes part in sharing the id (waiting at most kToldFailureWait for it): rank 0 shares its
  // failure in place of the id (kFailedMagic: every peer fails at once with "rank 0 failed:
  // ..."), another rank sends it as a notice once the rendezvous's connections exist (under a TCP
  // rendezvous; under an MPI launcher launch.cc sends it on the bootstrap). A failure of
  // ncclCommInitRank is told only when it is this rank's own (LocalFault: invalid use, a CUDA
  // error; Abort sends it): a system or remote error is what every rank sees of a lost peer, and
  // a notice of it would name a healthy rank. Under a rendezvous file nothing is told before the
  // id is shared (a file outlives its job, and before the id there is no name unique to the
  // attempt: a stale failure would fail the next attempt of the same run id); from
  // ncclCommInitRank on, as under TCP, through the notice file (NoticeFileFor).
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(const NcclOptions& o) {
    std::unique_ptr<NcclCommunicator> c(new NcclCommunicator());
    c->rank_ = o.rank;
    c->world_size_ = o.world_size;
    c->local_rank_ = o.local_rank;
    c->notices_ = o.notices;
    const absl::Time deadline = absl::Now() + o.init_timeout;
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    absl::Status local = c->SetUpDevice(o);
    if (local.ok() && o.rank == 0) {
      ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) local = LocalFault(NcclError("ncclGetUniqueId", r));  // rank 0's own
    }
    absl::Time share_deadline = deadline;
    if (!local.ok()) {
      // A channel to tell the others on: the bootstrap or the TCP rendezvous (never a file).
      if (o.world_size == 1 || (o.bootstrap == nullptr && o.master_addr.empty())) return local;
      share_deadline = std::min(deadline, absl::Now() + kToldFailureWait);
      Log(LogSeverity::kError,
          absl::StrCat("rank ", o.rank, " of ", o.world_size, ": NCCL start-up failed: ",
                       local.ToString(absl::StatusToStringMode::kWithNoExtraData),
                       "; telling the other ranks (waiting at most ",
                       absl::FormatDuration(share_deadline - absl::Now()), " for them)"));
    }
    std::string bytes;
    if (o.rank == 0) {
      bytes = local.ok() ? absl::StrCat(kIdMagic, absl::string_view(reinterpret_cast<const char*>(&id), sizeof(id)))
                         : absl::StrCat(kFailedMagic, NoticeText(local, TcpNotices::kMaxNoticeBytes));
    }
    absl::Status shared = absl::OkStatus();
    if (o.world_size == 1) {
      // nothing to share
    } else if (o.bootstrap != nullptr) {
      shared = o.bootstrap->Broadcast(bytes, 0, share_deadline);
    } else if (!o.master_addr.empty()) {
      // The rendezvous's connections stay open: the failure notices' channel (tcp_notices.h).
      std::vector<int> connections;
      absl::StatusOr<std::string> got = ShareFromRank0KeepingConnections(
          o.rank, o.world_size, o.master_addr, o.rendezvous_port, bytes, share_deadline, &connections);
      if (got.ok() && o.notices == nullptr) {
        c->tcp_notices_ = std::make_unique<TcpNotices>(o.rank, o.world_size, std::move(connections));
      } else {
        for (int fd : connections) {
          if (fd >= 0) ::close(fd);
        }
      }
      if (got.ok()) {
        bytes = *std::move(got);
      } else {
        shared = absl::Status(got.status().code(),
                              absl::StrCat("NCCL unique id: ", got.status().message(), " (the port is ",
                                           o.rendezvous_port_from.empty() ? "given" : o.rendezvous_port_from,
                                           "; EMBER_RENDEZVOUS_PORT chooses another)"));
      }
    } else if (!o.rendezvous_file.empty()) {
      // An id can repeat (NCCL_COMM_ID fixes it): a notice an earlier attempt left under this id's
      // name goes before the id is published, so no peer of this attempt can read it.
      if (o.rank == 0 && local.ok()) ::unlink(NoticeFileFor(o.rendezvous_file, id).c_str());
      absl::StatusOr<std::string> got = ShareThroughFile(o.rank, o.rendezvous_file, o.rendezvous_run_id, bytes, deadline);
      if (got.ok()) {
        bytes = *std::move(got);
      } else {
        shared = got.status();
      }
    } else {
      return absl::InvalidArgumentError(
          "NCCL backend: no way to share the ncclUniqueId (give a bootstrap communicator, "
          "MASTER_ADDR and a rendezvous port, or a rendezvous file)");
    }
    if (!local.ok()) {
      c->Fail(local);  // to the peers (a rank other than 0 under a TCP rendezvous; see above)
      return local;
    }
    EMBER_RETURN_IF_ERROR(shared);
    if (o.world_size > 1) EMBER_RETURN_IF_ERROR(ParseSharedId(bytes, &id));
    if (o.world_size > 1 && o.bootstrap == nullptr && o.master_addr.empty() && o.notices == nullptr) {
      // Shared through the rendezvous file: the notices go through a file beside it, named by this
      // attempt's id (rank 0 removed an earlier attempt's before publishing the id).
      c->file_notices_ = NoticeFileFor(o.rendezvous_file, id);
    }
    // A failure of this rank's own (LocalFault) was told by Abort (Poison); nothing else is.
    EMBER_RETURN_IF_ERROR(c->StartComm(o, id, deadline));
    return std::unique_ptr<Communicator>(std::move(c));
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  int local_rank() const override { return local_rank_; }
  std::string backend() const override { return "nccl"; }

 protected:
  // Under a TCP rendezvous the notices go over its connections (tcp_notices.h); under an MPI
  // launcher the combined communicator sends them on the bootstrap (launch.cc), not this.
  // Under a file rendezvous, in a file beside it (WriteFileNotice).
  void DoNotifyFailure(const absl::Status& error) override {
    if (tcp_notices_ != nullptr) tcp_notices_->Send(NoticeText(error, TcpNotices::kMaxNoticeBytes));
    if (!file_notices_.empty()) file_notice_sent_ = WriteFileNotice(NoticeText(error, TcpNotices::kMaxNoticeBytes));
  }
  // Under a TCP rendezvous a rank that failed does not meet: its peers abort their NCCL
  // communicator on its notice (a meeting on NCCL would wait for them until its deadline, or pair
  // with a peer's collective); they learned of the failure from the notice.
  absl::StatusOr<std::vector<int>> DoMeet(bool failed, absl::Time deadline) override {
    // (Under a file rendezvous only when its notice was written: otherwise the meeting is how the
    // peers learn of it.)
    if ((tcp_notices_ == nullptr && !file_notice_sent_) || !failed) return Communicator::DoMeet(failed, deadline);
    std::vector<int> flags(static_cast<size_t>(world_size_), 0);
    flags[static_cast<size_t>(rank_)] = 1;
    return flags;
  }
  absl::Status ReceivedNotice() override {
    if (peer_failure_.ok() && tcp_notices_ != nullptr) {
      if (std::optional<std::pair<int, std::string>> n = tcp_notices_->Poll(); n.has_value()) {
        peer_failure_ = PeerFailure(n->first, n->second);
      }
    }
    if (peer_failure_.ok() && !file_notices_.empty() && absl::Now() >= next_file_poll_) {
      // At most every 0.5 s plus 1 ms per rank: on a shared filesystem each look is a round trip
      // to its server, made by every waiting rank.
      next_file_poll_ = absl::Now() + kFileNoticePoll + absl::Milliseconds(world_size_);
      if (std::optional<std::pair<int, std::string>> n = ReadFileNotice(); n.has_value()) {
        peer_failure_ = PeerFailure(n->first, n->second);
      }
    }
    return peer_failure_;
  }

 public:
  bool device_buffers() const override { return true; }

 protected:
  absl::Status DoAllReduce(absl::Span<double> v, ReduceOp op, absl::Time deadline) override {
    return Staged(v.data(), v.size() * sizeof(double), v.data(), v.size() * sizeof(double), deadline,
                  [&](void* buf) {
                    return ncclAllReduce(buf, buf, v.size(), ncclFloat64, ToNccl(op), comm_, stream_);
                  });
  }
  absl::Status DoAllReduce(absl::Span<float> v, ReduceOp op, absl::Time deadline) override {
    return Staged(v.data(), v.size() * sizeof(float), v.data(), v.size() * sizeof(float), deadline,
                  [&](void* buf) {
                    return ncclAllReduce(buf, buf, v.size(), ncclFloat32, ToNccl(op), comm_, stream_);
                  });
  }
  absl::Status DoAllGather(absl::Span<const double> send, absl::Span<double> recv,
                           absl::Time deadline) override {
    const size_t in = send.size() * sizeof(double);
    return Staged(send.data(), in, recv.data(), recv.size() * sizeof(double), deadline,
                  [&](void* buf) {
                    // recv region starts at buf; rank r's slot is where our input must be.
                    char* base = static_cast<char*>(buf);
                    return ncclAllGather(base + rank_ * in, base, send.size(), ncclFloat64, comm_,
                                         stream_);
                  },
                  /*input_offset=*/rank_ * in);
  }
  absl::Status DoBroadcast(std::string& bytes, int root, absl::Time deadline) override {
    uint64_t size = bytes.size();
    EMBER_RETURN_IF_ERROR(Staged(&size, 8, &size, 8, deadline, [&](void* buf) {
      return ncclBroadcast(buf, buf, 8, ncclChar, root, comm_, stream_);
    }));
    ResizeLargeBuffer(bytes, size);  // many MiB: 2 MiB pages (base/large_buffer.h)
    if (size == 0) return absl::OkStatus();
    return Staged(bytes.data(), size, bytes.data(), size, deadline, [&](void* buf) {
      return ncclBroadcast(buf, buf, size, ncclChar, root, comm_, stream_);
    });
  }
  absl::Status DoBarrier(absl::Time deadline) override {
    float one = 1;
    return DoAllReduce(absl::MakeSpan(&one, 1), ReduceOp::kSum, deadline);
  }

  // Device buffers: enqueued on this communicator's stream after an event recorded on the
  // producer's stream; no copy, no host synchronisation until Wait(), which polls an event
  // recorded after the collective. Host buffers: the base class (staged, blocking).
  absl::StatusOr<std::unique_ptr<Pending>> DoStartAllReduce(const Buffer& b, ReduceOp op,
                                                            absl::Time deadline) override {
    if (b.on_host()) return Communicator::DoStartAllReduce(b, op, deadline);
    EMBER_RETURN_IF_ERROR(Usable("ncclAllReduce"));
    EMBER_RETURN_IF_ERROR(CheckNotices("ncclAllReduce", 0));  // as in Staged
    if (b.device != device_) {
      return absl::InvalidArgumentError(absl::StrCat("AllReduce of ", b.DebugString(), ": this rank's NCCL communicator is on cuda:",
                                                     device_, "; move the buffer there"));
    }
    cudaEvent_t ready = nullptr, done = nullptr;
    cudaError_t e = cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (e != cudaSuccess) return CudaError("cudaEventCreate", e);
    auto pending = std::make_unique<DevicePending>(this, done, deadline, b.DebugString());
    cudaStream_t producer = static_cast<cudaStream_t>(b.stream);
    if ((e = cudaEventRecord(ready, producer)) != cudaSuccess) return CudaError("cudaEventRecord", e);
    e = cudaStreamWaitEvent(stream_, ready, 0);
    cudaEventDestroy(ready);  // released once the wait is enqueued
    if (e != cudaSuccess) return CudaError("cudaStreamWaitEvent", e);
    ncclResult_t r = ncclAllReduce(b.data, b.data, b.count, ToNccl(b.dtype), ToNccl(op), comm_, stream_);
    if (r != ncclSuccess && r != ncclInProgress) return Abort(NcclError("ncclAllReduce", r));
    EMBER_RETURN_IF_ERROR(WaitComm("ncclAllReduce enqueue", deadline));
    if ((e = cudaEventRecord(done, stream_)) != cudaSuccess) return CudaError("cudaEventRecord", e);
    return std::unique_ptr<Pending>(std::move(pending));
  }

 private:
  NcclCommunicator() = default;

  // A device all-reduce in flight: Wait() polls its event and NCCL's error state; at the deadline
  // the communicator is aborted (which frees the GPU from the stuck kernel).
  class DevicePending final : public Pending {
   public:
    DevicePending(NcclCommunicator* c, cudaEvent_t done, absl::Time deadline, std::string what)
        : c_(c), done_(done), deadline_(deadline), what_(std::move(what)) {}
    ~DevicePending() override {
      if (done_ != nullptr) cudaEventDestroy(done_);
    }
    absl::Status Wait() override {
      if (!waited_) {
        status_ = c_->PollEvent(done_, absl::StrCat("ncclAllReduce of ", what_).c_str(), deadline_);
        waited_ = true;
      }
      return status_;
    }

   private:
    NcclCommunicator* c_;
    cudaEvent_t done_;
    absl::Time deadline_;
    std::string what_;
    bool waited_ = false;
    absl::Status status_;
  };

  static ncclDataType_t ToNccl(DType t) {
    switch (t) {
      case DType::kFloat32:
        return ncclFloat32;
      case DType::kFloat64:
        return ncclFloat64;
      case DType::kFloat16:
        return ncclFloat16;
      case DType::kBFloat16:
        return ncclBfloat16;
      case DType::kInt64:
        return ncclInt64;
    }
    return ncclFloat32;
  }
  static ncclRedOp_t ToNccl(ReduceOp op) { return ::ember::dist::ToNccl(op); }

  // What rank 0 shares: kIdMagic and the ncclUniqueId, or kFailedMagic and its start-up failure
  // (NoticeText: at most TcpNotices::kMaxNoticeBytes of UTF-8).
  static constexpr absl::string_view kIdMagic = "EMBER-NCCL-ID1\n";
  static constexpr absl::string_view kFailedMagic = "EMBER-NCCL-FAILED1\n";
  // How long a rank whose own start failed waits to tell the others (for the rendezvous).
  static constexpr absl::Duration kToldFailureWait = absl::Seconds(60);
  // Under a file rendezvous: how often a wait looks for a peer's notice file.
  static constexpr absl::Duration kFileNoticePoll = absl::Milliseconds(500);
  static constexpr char kFileNoticeMagic[] = "EMBER-NCCL-NOTICE1\n";

  // The notice file of the attempt whose id is `id`: the rendezvous file's path, then the id's
  // FNV-1a digest (ncclGetUniqueId draws a new id every attempt).
  static std::string NoticeFileFor(const std::string& rendezvous_file, const ncclUniqueId& id) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(id.internal); ++i) {
      h = (h ^ static_cast<unsigned char>(id.internal[i])) * 1099511628211ull;
    }
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
    return absl::StrCat(rendezvous_file, ".notice-", hex);
  }

  // Best effort, bounded by the filesystem: a temporary file of this rank's (O_EXCL, no symlink
  // followed), then link(2) to the notice's name, which fails if a notice is there already: the
  // first failure told stays (a later one is often a consequence of it). Whether it was written.
  bool WriteFileNotice(const std::string& text) {
    const std::string tmp = absl::StrCat(file_notices_, ".rank", rank_, ".tmp");
    const std::string body = absl::StrCat(kFileNoticeMagic, rank_, "\n", text);
    ::unlink(tmp.c_str());  // a crashed attempt's
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    int err = fd >= 0 ? 0 : errno;
    for (size_t at = 0; err == 0 && at < body.size();) {
      const ssize_t n = ::write(fd, body.data() + at, body.size() - at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) err = n < 0 ? errno : EIO;
      if (n > 0) at += static_cast<size_t>(n);
    }
    if (fd >= 0 && ::close(fd) != 0 && err == 0) err = errno;
    if (err == 0 && ::link(tmp.c_str(), file_notices_.c_str()) != 0 && errno != EEXIST) err = errno;
    ::unlink(tmp.c_str());
    if (err == 0) return true;
    Log(LogSeverity::kWarning, absl::StrCat("rank ", rank_, ": could not write the failure notice ", file_notices_, ": ",
                                            std::strerror(err), " (the other ranks learn of it at the shutdown meeting, "
                                            "or end at their deadline)"));
    return false;
  }

  // A peer's notice: (its rank, its text), or nothing: no file yet, this rank's own, or bytes that
  // are not a notice of this job's ranks (not a regular file, no magic, a rank line that is not
  // exactly a rank of this job, an empty text, more than kMaxNoticeBytes), or a file that cannot
  // be read; the last two are logged once and otherwise ignored.
  std::optional<std::pair<int, std::string>> ReadFileNotice() {
    const int fd = ::open(file_notices_.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      if (errno != ENOENT) IgnoredNotice(std::strerror(errno));
      return std::nullopt;
    }
    struct stat st;
    std::string bytes;
    const size_t limit = sizeof(kFileNoticeMagic) + 16 + TcpNotices::kMaxNoticeBytes;
    bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    if (regular) {
      bytes.resize(limit + 1);  // one byte past the limit: an oversize file is not a notice
      size_t got = 0;
      for (ssize_t n; got < bytes.size() && ((n = ::read(fd, bytes.data() + got, bytes.size() - got)) > 0 ||
                                             (n < 0 && errno == EINTR));) {
        if (n > 0) got += static_cast<size_t>(n);
      }
      bytes.resize(got);
    }
    ::close(fd);
    // "<magic><rank>\n<text>": the rank line exactly a rank of this job, the text not empty.
    const absl::string_view magic(kFileNoticeMagic);
    const size_t eol = bytes.find('\n', magic.size());
    const absl::string_view line =
        eol == std::string::npos ? absl::string_view() : absl::string_view(bytes).substr(magic.size(), eol - magic.size());
    int rank = -1;
    if (regular && bytes.size() <= limit && absl::StartsWith(bytes, magic) && absl::SimpleAtoi(line, &rank) &&
        rank >= 0 && rank < world_size_ && line == std::to_string(rank) && eol + 1 < bytes.size()) {
      if (rank == rank_) return std::nullopt;
      return std::make_pair(rank, EscapedText(absl::string_view(bytes).substr(eol + 1)));
    }
    IgnoredNotice(absl::StrCat(regular ? "" : "not a regular file; ", bytes.size(), " bytes, not a failure notice of this job's ranks"));
    return std::nullopt;
  }
  void IgnoredNotice(const std::string& why) {
    if (malformed_notice_logged_) return;
    malformed_notice_logged_ = true;
    Log(LogSeverity::kWarning, absl::StrCat("rank ", rank_, ": ", file_notices_, ": ", why, "; ignored"));
  }

  // `bytes` from rank 0: its id (into *id), or its failure (a PeerFailure, its text printed with
  // anything but well-formed printable UTF-8 escaped as \xNN); anything else, such as another
  // build's rank 0, is kDataLoss, its bytes never printed.
  static absl::Status ParseSharedId(absl::string_view bytes, ncclUniqueId* id) {
    const size_t size = bytes.size();
    if (absl::ConsumePrefix(&bytes, kFailedMagic)) {
      if (bytes.size() > TcpNotices::kMaxNoticeBytes) {
        return absl::DataLossError(absl::StrCat("NCCL rendezvous: rank 0 sent a failure of ", bytes.size(),
                                                " bytes, more than the ", TcpNotices::kMaxNoticeBytes, " a failure has"));
      }
      return WhileWaiting(PeerFailure(0, EscapedText(bytes)), "sharing NCCL's unique id");
    }
    if (absl::ConsumePrefix(&bytes, kIdMagic) && bytes.size() == sizeof(*id)) {
      std::memcpy(id, bytes.data(), sizeof(*id));
      return absl::OkStatus();
    }
    return absl::DataLossError(absl::StrCat(
        "NCCL rendezvous: rank 0 sent ", size,
        " bytes that are neither an NCCL unique id nor a failure of Ember's (does every rank run the same build?)"));
  }

  // `text` with every byte that is not part of a well-formed UTF-8 character (no overlong form,
  // surrogate or code point above U+10FFFF), or that is a control character (C0 but tab and
  // newline, DEL, C1), written as \xNN.
  static std::string EscapedText(absl::string_view text) {
    std::string out;
    for (size_t i = 0; i < text.size();) {
      const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[i + k]); };
      const unsigned char c = byte(0);
      size_t n = 0;
      if (c < 0x80) {
        n = (c >= 0x20 && c != 0x7F) || c == '\t' || c == '\n' ? 1 : 0;
      } else if (c >= 0xC2 && c <= 0xF4) {
        n = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (i + n > text.size()) {
          n = 0;
        } else {
          const unsigned char second = byte(1);
          const unsigned char lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
          const unsigned char hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
          if (second < lo || second > hi || (c == 0xC2 && second < 0xA0)) n = 0;  // C2 80-9F: C1 controls
          for (size_t k = 2; k < n; ++k) {
            if ((byte(k) & 0xC0) != 0x80) n = 0;
          }
        }
      }
      if (n == 0) {
        absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
        ++i;
      } else {
        out.append(text.data() + i, n);
        i += n;
      }
    }
    return out;
  }

  // This rank's device, stream and event (before the id is shared).
  absl::Status SetUpDevice(const NcclOptions& o) {
    int devices = 0;
    cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || devices == 0) {
      return LocalFault(absl::FailedPreconditionError(absl::StrCat(
          "NCCL backend: no CUDA device visible to rank ", o.rank, " (",
          e == cudaSuccess ? "0 devices" : cudaGetErrorString(e), ")")));
    }
    device_ = o.local_rank % devices;
    if ((e = cudaSetDevice(device_)) != cudaSuccess) return CudaError("cudaSetDevice", e);
    if ((e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)) != cudaSuccess) {
      return CudaError("cudaStreamCreate", e);
    }
    if ((e = cudaEventCreateWithFlags(&staged_done_, cudaEventDisableTiming)) != cudaSuccess) {
      return CudaError("cudaEventCreate", e);
    }
    return absl::OkStatus();
  }

  // The non-blocking ncclCommInitRank, polled until done (notices, deadline).
  absl::Status StartComm(const NcclOptions& o, const ncclUniqueId& id, absl::Time deadline) {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, o.world_size, id, o.rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      // A failed non-blocking init may leave a communicator behind: abort it, never destroy it.
      return Abort(NcclError("ncclCommInitRankConfig", r));
    }
    return WaitComm("ncclCommInitRank", deadline);
  }

  // Whether the communicator can still be used: not aborted (by a deadline or an NCCL error in
  // any collective) and not poisoned.
  absl::Status Usable(const char* what) const {
    if (aborted_ || comm_ == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": NCCL communicator was aborted (",
                                                        abort_reason_.message(), ")"));
    }
    return absl::OkStatus();
  }

  // On any NCCL error or deadline: ncclCommAbort (which frees the GPU from a stuck kernel; a
  // failed communicator is never destroyed), then poison, then return `error`. Every collective
  // still pending on this communicator fails from then on (PollEvent checks the flag first).
  absl::Status Abort(absl::Status error) {
    if (!aborted_) {
      aborted_ = true;
      abort_reason_ = error;
      if (comm_ != nullptr) ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    CollectiveFailed(error);
    return error;
  }

  // Polls `event` until it completes. Each round checks first whether the communicator was
  // aborted (then the collective fails, even if its event completed: what it computed may be
  // partial), then NCCL's asynchronous error (abort, poison, return), then the event, then the
  // deadline (abort).
  absl::Status PollEvent(cudaEvent_t event, const char* what, absl::Time deadline) {
    for (int64_t polls = 0;; ++polls) {
      EMBER_RETURN_IF_ERROR(Usable(what));
      ncclResult_t state = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) return Abort(NcclError(what, r));
      if (state != ncclSuccess && state != ncclInProgress) return Abort(NcclError(what, state));
      cudaError_t e = cudaEventQuery(event);
      if (e == cudaSuccess) return absl::OkStatus();
      if (e != cudaErrorNotReady) return Abort(CudaError(what, e));
      EMBER_RETURN_IF_ERROR(CheckNotices(what, polls));
      if (absl::Now() > deadline) {
        return Abort(absl::DeadlineExceededError(
            absl::StrCat(what, ": not every rank joined before the deadline; NCCL communicator aborted")));
      }
      if (polls > 1000) std::this_thread::yield();
    }
  }

  // Every 64 polls of a wait (the first included): a peer's failure notice (NcclOptions::notices)
  // aborts the communicator and fails the wait with it.
  absl::Status CheckNotices(const char* what, int64_t polls) {
    // Only on the thread that made this communicator (the training thread): the MPI bootstrap is
    // initialised MPI_THREAD_FUNNELED, and a gradient hook may start a bucket on autograd's
    // device thread.
    if ((notices_ == nullptr && tcp_notices_ == nullptr && file_notices_.empty()) || (polls & 63) != 0 ||
        std::this_thread::get_id() != owner_) {
      return absl::OkStatus();
    }
    absl::Status notice = notices_ != nullptr ? notices_->PeerNotice() : ReceivedNotice();
    if (notice.ok()) return notice;
    return Abort(WhileWaiting(notice, absl::StrCat(what, "; NCCL communicator aborted")));
  }

  // Waits until the communicator has no operation in progress; an NCCL error or the deadline
  // aborts it.
  absl::Status WaitComm(const char* what, absl::Time deadline) {
    for (int64_t polls = 0;; ++polls) {
      EMBER_RETURN_IF_ERROR(Usable(what));
      ncclResult_t state = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) return Abort(NcclError(what, r));
      if (state == ncclSuccess) return absl::OkStatus();
      if (state != ncclInProgress) return Abort(NcclError(what, state));
      EMBER_RETURN_IF_ERROR(CheckNotices(what, polls));
      if (absl::Now() > deadline) {
        return Abort(absl::DeadlineExceededError(
            absl::StrCat(what, ": not every rank joined before the deadline; NCCL communicator aborted")));
      }
      std::this_thread::yield();
    }
  }

  // The staging buffers (device and pinned host) hold at least `need` bytes. Growing frees the old
  // ones only once this communicator's stream is idle (an event polled against the deadline: a
  // stuck collective aborts instead of blocking), the device buffer stream-ordered
  // (cudaFreeAsync / cudaMallocAsync, no device-wide cudaFree).
  absl::Status Reserve(size_t need, absl::Time deadline) {
    if (need <= capacity_) return absl::OkStatus();
    EMBER_RETURN_IF_ERROR(ReleaseStaging(deadline));
    cudaError_t e = cudaMallocAsync(&device_buffer_, need, stream_);
    if (e != cudaSuccess) {
      device_buffer_ = nullptr;
      return CudaError("cudaMallocAsync (NCCL staging)", e);
    }
    if ((e = cudaMallocHost(&pinned_, need)) != cudaSuccess) {
      pinned_ = nullptr;
      return CudaError("cudaMallocHost (NCCL staging)", e);
    }
    capacity_ = need;
    return absl::OkStatus();
  }

  // Frees the staging buffers once the stream is idle (see Reserve). cudaFreeHost still waits for
  // the device's other streams (the training's kernels: bounded), never for a collective of this
  // communicator, which has completed by then.
  absl::Status ReleaseStaging(absl::Time deadline) {
    if (device_buffer_ == nullptr && pinned_ == nullptr) return absl::OkStatus();
    cudaError_t e = cudaEventRecord(staged_done_, stream_);
    if (e != cudaSuccess) return Abort(CudaError("cudaEventRecord", e));
    EMBER_RETURN_IF_ERROR(PollEvent(staged_done_, "NCCL staging buffer release", deadline));
    if (device_buffer_ != nullptr && (e = cudaFreeAsync(device_buffer_, stream_)) != cudaSuccess) {
      return Abort(CudaError("cudaFreeAsync (NCCL staging)", e));
    }
    device_buffer_ = nullptr;
    if (pinned_ != nullptr && (e = cudaFreeHost(pinned_)) != cudaSuccess) {
      return Abort(CudaError("cudaFreeHost (NCCL staging)", e));
    }
    pinned_ = nullptr;
    capacity_ = 0;
    return absl::OkStatus();
  }

  // Copies `in` into pinned host memory and on to the device (at input_offset), runs `op` on the
  // device buffer, copies the result back to pinned memory and then to `out`. Every copy is
  // asynchronous (pinned memory), so the host polls an event against the deadline while the
  // collective runs: a dead peer ends in ncclCommAbort, never in a blocked cudaMemcpy.
  template <typename Op>
  absl::Status Staged(const void* in, size_t in_bytes, void* out, size_t out_bytes,
                      absl::Time deadline, Op op, size_t input_offset = 0) {
    EMBER_RETURN_IF_ERROR(Usable("NCCL collective"));
    // A notice that came already fails the collective before it is issued: one that could
    // complete at once would not poll for it, and a failed rank's shutdown meeting must never
    // pair with it.
    EMBER_RETURN_IF_ERROR(CheckNotices("an NCCL collective", 0));
    const size_t need = std::max(in_bytes + input_offset, out_bytes);
    EMBER_RETURN_IF_ERROR(Reserve(need, deadline));
    char* buf = static_cast<char*>(device_buffer_);
    char* host = static_cast<char*>(pinned_);
    std::memcpy(host + input_offset, in, in_bytes);
    cudaError_t e = cudaMemcpyAsync(buf + input_offset, host + input_offset, in_bytes, cudaMemcpyHostToDevice, stream_);
    if (e != cudaSuccess) return Abort(CudaError("cudaMemcpyAsync", e));
    ncclResult_t r = op(buf);
    if (r != ncclSuccess && r != ncclInProgress) return Abort(NcclError("NCCL collective", r));
    EMBER_RETURN_IF_ERROR(WaitComm("NCCL collective enqueue", deadline));
    e = cudaMemcpyAsync(host, buf, out_bytes, cudaMemcpyDeviceToHost, stream_);
    if (e != cudaSuccess) return Abort(CudaError("cudaMemcpyAsync", e));
    if ((e = cudaEventRecord(staged_done_, stream_)) != cudaSuccess) return Abort(CudaError("cudaEventRecord", e));
    CountStaged(static_cast<int64_t>(in_bytes + out_bytes));
    EMBER_RETURN_IF_ERROR(PollEvent(staged_done_, "NCCL collective", deadline));
    std::memcpy(out, host, out_bytes);
    // Staging grows to the largest collective (a whole serialized checkpoint broadcast at
    // resume): above kStagingKeptBytes it is released once that collective is done.
    if (capacity_ > kStagingKeptBytes) EMBER_RETURN_IF_ERROR(ReleaseStaging(deadline));
    return absl::OkStatus();
  }

  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  Communicator* notices_ = nullptr;  // NcclOptions::notices (not owned)
  // Without NcclOptions::notices, under a TCP rendezvous: the notices over its connections.
  std::unique_ptr<TcpNotices> tcp_notices_;
  absl::Status peer_failure_;  // the first notice tcp_notices_ or file_notices_ brought
  // Under a file rendezvous (no bootstrap, no MASTER_ADDR): the notice file (NoticeFileFor).
  std::string file_notices_;
  absl::Time next_file_poll_ = absl::InfinitePast();
  std::atomic<bool> file_notice_sent_{false};  // WriteFileNotice wrote this rank's (DoMeet; set on any thread)
  bool malformed_notice_logged_ = false;
  std::thread::id owner_ = std::this_thread::get_id();  // polls notices_ (CheckNotices)
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  void* device_buffer_ = nullptr;
  void* pinned_ = nullptr;  // page-locked staging, capacity_ bytes
  cudaEvent_t staged_done_ = nullptr;
  size_t capacity_ = 0;
  bool aborted_ = false;        // ncclCommAbort was called: every later use fails
  absl::Status abort_reason_;   // why
};

}  // namespace

bool NcclBuilt() { return true; }

int CudaDeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const NcclOptions& options) {
  return NcclCommunicator::Create(options);
}

}  // namespace ember::dist
