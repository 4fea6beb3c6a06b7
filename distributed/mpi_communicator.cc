#include "distributed/mpi_communicator.h"

#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <cstring>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/large_buffer.h"
#include "base/status_macros.h"
#include "distributed/launcher_env.h"

namespace ember::dist {
namespace {

absl::Status MpiError(const char* what, int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return absl::InternalError(absl::StrCat(what, ": ", std::string(text, static_cast<size_t>(len))));
}

MPI_Op ToMpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMin:
      return MPI_MIN;
    case ReduceOp::kMax:
      return MPI_MAX;
  }
  return MPI_SUM;
}

// The reduction of two 16-bit floating-point vectors (MPI has no such type): widened to float,
// combined, narrowed back, element by element.
template <float (*Widen)(uint16_t), uint16_t (*Narrow)(float), ReduceOp kOp>
void Reduce16(void* in, void* inout, int* len, MPI_Datatype*) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = Widen(a[i]);
    const float y = Widen(b[i]);
    float r = x + y;
    if (kOp == ReduceOp::kMin) r = std::fmin(x, y);
    if (kOp == ReduceOp::kMax) r = std::fmax(x, y);
    b[i] = Narrow(r);
  }
}

// Ember's MPI operations for float16 and bfloat16, created once after MPI_Init.
struct Ops16 {
  MPI_Op op[2][3];  // [float16, bfloat16][sum, min, max]
  Ops16() {
    MPI_Op_create(&Reduce16<HalfToFloat, FloatToHalf, ReduceOp::kSum>, 1, &op[0][0]);
    MPI_Op_create(&Reduce16<HalfToFloat, FloatToHalf, ReduceOp::kMin>, 1, &op[0][1]);
    MPI_Op_create(&Reduce16<HalfToFloat, FloatToHalf, ReduceOp::kMax>, 1, &op[0][2]);
    MPI_Op_create(&Reduce16<BFloat16ToFloat, FloatToBFloat16, ReduceOp::kSum>, 1, &op[1][0]);
    MPI_Op_create(&Reduce16<BFloat16ToFloat, FloatToBFloat16, ReduceOp::kMin>, 1, &op[1][1]);
    MPI_Op_create(&Reduce16<BFloat16ToFloat, FloatToBFloat16, ReduceOp::kMax>, 1, &op[1][2]);
  }
};

const Ops16& GetOps16() {
  static const Ops16* ops = new Ops16();  // lives until MPI_Finalize, which frees user operations
  return *ops;
}

int OpIndex(ReduceOp op) { return op == ReduceOp::kSum ? 0 : op == ReduceOp::kMin ? 1 : 2; }

enum Channel { kBuffers, kReduce, kGather, kBroadcast, kBarrier, kControl, kChannels };
const char* const kChannelNames[kChannels] = {"gradient buffers", "all-reduce", "all-gather",
                                              "broadcast", "barrier", "control"};
constexpr int kNoticeTag = 7;
constexpr int kNoticeBytes = 1024;

}  // namespace

struct MpiCommunicator::Channels {
  MPI_Comm comm[kChannels];
  MPI_Request notice = MPI_REQUEST_NULL;  // the posted receive of a peer's failure notice
  char notice_bytes[kNoticeBytes];
  std::string sent;                  // this rank's notice (the buffer of the sends below)
  std::vector<MPI_Request> sends;
  Channels() {
    for (MPI_Comm& c : comm) c = MPI_COMM_NULL;
  }
};

MpiCommunicator::MpiCommunicator() : channels_(new Channels()) {}

// Spins briefly (collectives of a few bytes finish in microseconds), then yields, then sleeps,
// so that oversubscribed ranks make progress.
absl::Status MpiCommunicator::Wait(void* request_ptr, const char* what, absl::Time deadline, bool watch, bool bulk) {
  MPI_Request* request = static_cast<MPI_Request*>(request_ptr);
  int done = 0;
  for (int64_t polls = 0;; ++polls) {
    int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return MpiError(what, rc);
    if (done) return absl::OkStatus();
    if (watch && (polls & 63) == 0) {
      if (absl::Status notice = ReceivedNotice(); !notice.ok()) {
        return WhileWaiting(notice, what);
      }
    }
    if (polls < 64) continue;
    if ((polls & 63) == 0 && absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": not every rank joined before the deadline (a rank stalled, died "
                             "or is running a different collective)"));
    }
    if (bulk || polls < 20000) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
}

absl::Status MpiCommunicator::ReceivedNotice() {
  if (!peer_failure_.ok()) return peer_failure_;
  if (channels_ == nullptr || channels_->notice == MPI_REQUEST_NULL) return absl::OkStatus();
  int done = 0;
  MPI_Status status;
  if (MPI_Test(&channels_->notice, &done, &status) != MPI_SUCCESS || !done) return absl::OkStatus();
  int len = 0;
  MPI_Get_count(&status, MPI_CHAR, &len);
  len = std::max(0, std::min(len, kNoticeBytes));
  peer_failure_ = PeerFailure(status.MPI_SOURCE, std::string(channels_->notice_bytes, static_cast<size_t>(len)));
  return peer_failure_;
}

void MpiCommunicator::DoNotifyFailure(const absl::Status& error) {
  if (channels_ == nullptr || channels_->comm[kControl] == MPI_COMM_NULL || !channels_->sent.empty()) return;
  channels_->sent = NoticeText(error, kNoticeBytes);
  for (int r = 0; r < world_size_; ++r) {
    if (r == rank_) continue;
    MPI_Request request;
    if (MPI_Isend(channels_->sent.data(), static_cast<int>(channels_->sent.size()), MPI_CHAR, r, kNoticeTag,
                  channels_->comm[kControl], &request) == MPI_SUCCESS) {
      channels_->sends.push_back(request);
    }
  }
}

absl::StatusOr<std::vector<int>> MpiCommunicator::DoMeet(bool failed, absl::Time deadline) {
  // Staged (see AllReduceStaged): a meeting given up on may complete later.
  auto staging = std::make_shared<std::vector<int>>(static_cast<size_t>(world_size_) + 1);
  int* mine = staging->data() + world_size_;
  *mine = failed ? 1 : 0;
  MPI_Request request;
  int rc = MPI_Iallgather(mine, 1, MPI_INT, staging->data(), 1, MPI_INT, channels_->comm[kControl], &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Iallgather (shutdown meeting)", rc);
  // Not watching notices: a rank that failed comes to the meeting too.
  if (absl::Status s = Wait(&request, "MPI_Iallgather (shutdown meeting)", deadline, /*watch=*/false); !s.ok()) {
    AbandonToTransport(std::move(staging));
    return s;
  }
  return std::vector<int>(staging->begin(), staging->begin() + world_size_);
}

// A posted MPI_Iallreduce.
class MpiPending final : public Pending {
 public:
  MpiPending(MpiCommunicator* comm, MPI_Request request, absl::Time deadline, std::string what)
      : comm_(comm), request_(request), deadline_(deadline), what_(std::move(what)) {}
  absl::Status Wait() override {
    if (!done_) {
      status_ = comm_->Wait(&request_, what_.c_str(), deadline_);
      done_ = true;
    }
    return status_;
  }

 private:
  MpiCommunicator* comm_;
  MPI_Request request_;
  absl::Time deadline_;
  std::string what_;
  bool done_ = false;
  absl::Status status_;
};

absl::StatusOr<std::unique_ptr<Pending>> MpiCommunicator::DoStartAllReduce(const Buffer& b, ReduceOp op,
                                                                           absl::Time deadline) {
  if (!b.on_host()) return Communicator::DoStartAllReduce(b, op, deadline);  // says why not
  if (b.count > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("AllReduce of ", b.DebugString(), ": more than ", INT_MAX,
                                                   " elements; split it"));
  }
  MPI_Datatype type = MPI_FLOAT;
  MPI_Op mpi_op = ToMpi(op);
  switch (b.dtype) {
    case DType::kFloat32:
      type = MPI_FLOAT;
      break;
    case DType::kFloat64:
      type = MPI_DOUBLE;
      break;
    case DType::kInt64:
      type = MPI_INT64_T;
      break;
    case DType::kFloat16:
      type = MPI_UINT16_T;
      mpi_op = GetOps16().op[0][OpIndex(op)];
      break;
    case DType::kBFloat16:
      type = MPI_UINT16_T;
      mpi_op = GetOps16().op[1][OpIndex(op)];
      break;
  }
  MPI_Request request;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, b.data, static_cast<int>(b.count), type, mpi_op, channels_->comm[kBuffers],
                          &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Iallreduce", rc);
  return std::unique_ptr<Pending>(
      new MpiPending(this, request, deadline, absl::StrCat("MPI_Iallreduce of ", b.DebugString())));
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(absl::Duration init_timeout) {
  const absl::Time deadline = absl::Now() + init_timeout;
  std::unique_ptr<MpiCommunicator> comm(new MpiCommunicator());
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return MpiError("MPI_Init_thread", rc);
    comm->finalize_ = true;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &comm->rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &comm->world_size_);
  // The local rank comes from the launcher (mpirun, srun and Hydra set it per host). Not from
  // MPI_Comm_split_type(MPI_COMM_TYPE_SHARED): OpenMPI 4.1 judges locality by host name, and
  // with hosts that share a name (containers, network namespaces) the call hangs.
  absl::StatusOr<LaunchInfo> info = ReadLaunchInfo();
  if (info.ok() && info->world_size == comm->world_size_ && info->rank == comm->rank_) {
    comm->local_rank_ = info->local_rank;
  } else {
    // No launcher variables: ranks with the same host name count as one host.
    // Staged (see AllReduceStaged): this rank's name first, then every rank's.
    auto staging = std::make_shared<std::vector<char>>(static_cast<size_t>(MPI_MAX_PROCESSOR_NAME) *
                                                       (comm->world_size_ + 1));
    char* name = staging->data();
    char* all = name + MPI_MAX_PROCESSOR_NAME;
    int len = 0;
    MPI_Get_processor_name(name, &len);
    MPI_Request request;
    int rc = MPI_Iallgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all, MPI_MAX_PROCESSOR_NAME, MPI_CHAR,
                            MPI_COMM_WORLD, &request);
    if (rc != MPI_SUCCESS) return MpiError("MPI_Iallgather (host names)", rc);
    if (absl::Status s = comm->Wait(&request, "MPI_Iallgather (host names)", deadline, false); !s.ok()) {
      AbandonToTransport(std::move(staging));
      comm->Poison(s);  // a peer never joined: MPI_Finalize would block on it
      return s;
    }
    for (int r = 0; r < comm->rank_; ++r) {
      if (std::strncmp(all + static_cast<size_t>(r) * MPI_MAX_PROCESSOR_NAME, name, MPI_MAX_PROCESSOR_NAME) == 0) {
        ++comm->local_rank_;
      }
    }
  }
  // One matching space per kind of traffic (see the header).
  for (int c = 0; c < kChannels; ++c) {
    MPI_Request request;
    int rc = MPI_Comm_idup(MPI_COMM_WORLD, &comm->channels_->comm[c], &request);
    if (rc != MPI_SUCCESS) return MpiError("MPI_Comm_idup", rc);
    const std::string what = absl::StrCat("MPI_Comm_idup (", kChannelNames[c], ")");
    if (absl::Status s = comm->Wait(&request, what.c_str(), deadline, false); !s.ok()) {
      comm->Poison(s);  // the destructor leaves the channels (the posted idup's target) to MPI
      return s;
    }
    MPI_Comm_set_errhandler(comm->channels_->comm[c], MPI_ERRORS_RETURN);
  }
  int rc = MPI_Irecv(comm->channels_->notice_bytes, kNoticeBytes, MPI_CHAR, MPI_ANY_SOURCE, kNoticeTag,
                     comm->channels_->comm[kControl], &comm->channels_->notice);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Irecv (failure notices)", rc);
  return comm;
}

MpiCommunicator::~MpiCommunicator() {
  if (channels_ == nullptr) return;
  // This rank's failure notices leave before the process does (bounded: a peer may be gone).
  const absl::Time until = absl::Now() + absl::Seconds(2);
  while (!channels_->sends.empty() && absl::Now() < until) {
    int done = 0;
    MPI_Testall(static_cast<int>(channels_->sends.size()), channels_->sends.data(), &done, MPI_STATUSES_IGNORE);
    if (done) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  // After a failed collective MPI_Finalize may block forever on the peers; leave it undone. The
  // notice's receive (and any collective given up on) stays posted: its memory stays with MPI.
  if (!finalize_ || !poisoned().ok()) {
    AbandonToTransport(std::shared_ptr<Channels>(channels_.release()));
    return;
  }
  if (channels_->notice != MPI_REQUEST_NULL) {
    MPI_Cancel(&channels_->notice);
    MPI_Wait(&channels_->notice, MPI_STATUS_IGNORE);
  }
  for (MPI_Comm& c : channels_->comm) {
    if (c != MPI_COMM_NULL) MPI_Comm_free(&c);
  }
  MPI_Finalize();
}

// The communicator's collectives on memory it does not own post on staging memory of its own,
// which a failed wait leaves to MPI (AbandonToTransport: MPI may still write it). The copies are
// of a few values (agreements, metrics, settings); a broadcast's bytes are moved, not copied.
template <typename T>
absl::Status MpiCommunicator::AllReduceStaged(absl::Span<T> values, ReduceOp op, absl::Time deadline) {
  static_assert(std::is_same_v<T, double> || std::is_same_v<T, float>);
  const MPI_Datatype type = std::is_same_v<T, double> ? MPI_DOUBLE : MPI_FLOAT;
  if (values.size() > INT_MAX) return absl::InvalidArgumentError("AllReduce: too many values");
  auto staging = std::make_shared<std::vector<T>>(values.begin(), values.end());
  MPI_Request request;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, staging->data(), static_cast<int>(staging->size()), type, ToMpi(op),
                          channels_->comm[kReduce], &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Iallreduce", rc);
  if (absl::Status s = Wait(&request, "MPI_Iallreduce", deadline); !s.ok()) {
    AbandonToTransport(std::move(staging));
    return s;
  }
  std::copy(staging->begin(), staging->end(), values.begin());
  return absl::OkStatus();
}

absl::Status MpiCommunicator::DoAllReduce(absl::Span<double> values, ReduceOp op,
                                          absl::Time deadline) {
  return AllReduceStaged(values, op, deadline);
}

absl::Status MpiCommunicator::DoAllReduce(absl::Span<float> values, ReduceOp op,
                                          absl::Time deadline) {
  return AllReduceStaged(values, op, deadline);
}

absl::Status MpiCommunicator::DoAllGather(absl::Span<const double> send, absl::Span<double> recv,
                                          absl::Time deadline) {
  struct Staging {
    std::vector<double> send, recv;
  };
  auto staging = std::make_shared<Staging>(Staging{{send.begin(), send.end()}, std::vector<double>(recv.size())});
  MPI_Request request;
  int rc = MPI_Iallgather(staging->send.data(), static_cast<int>(send.size()), MPI_DOUBLE, staging->recv.data(),
                          static_cast<int>(send.size()), MPI_DOUBLE, channels_->comm[kGather], &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Iallgather", rc);
  if (absl::Status s = Wait(&request, "MPI_Iallgather", deadline); !s.ok()) {
    AbandonToTransport(std::move(staging));
    return s;
  }
  std::copy(staging->recv.begin(), staging->recv.end(), recv.begin());
  return absl::OkStatus();
}

absl::Status MpiCommunicator::DoBroadcast(std::string& bytes, int root, absl::Time deadline) {
  // The size, as an all-reduce (MAX of the root's size and everyone else's 0) rather than a
  // broadcast: it completes only once every rank has joined (an eager broadcast of 8 bytes leaves
  // the root at once), so that the payload's wait, which never sleeps, never spins for a late rank.
  auto sizes = std::make_shared<std::array<uint64_t, 2>>();
  (*sizes)[0] = rank_ == root ? bytes.size() : 0;
  MPI_Request request;
  int rc = MPI_Iallreduce(sizes->data(), sizes->data() + 1, 1, MPI_UINT64_T, MPI_MAX, channels_->comm[kBroadcast],
                          &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Iallreduce (broadcast size)", rc);
  if (absl::Status s = Wait(&request, "MPI_Iallreduce (broadcast size)", deadline); !s.ok()) {
    AbandonToTransport(std::move(sizes));
    return s;
  }
  const uint64_t* size = sizes->data() + 1;
  // The bytes are received in place; on a failed wait the string's heap buffer goes to MPI (moved,
  // so the caller's `bytes` is left empty). Capacity beyond the short-string buffer makes sure the
  // data lives on the heap, where a move keeps it.
  if (rank_ != root) bytes.clear();  // nothing of the old content to keep (and copy on a reserve)
  bytes.reserve(64);
  ResizeLargeBuffer(bytes, *size);  // many MiB: on 2 MiB pages, which CMA also copies far faster into
  for (uint64_t offset = 0; offset < *size;) {
    const int chunk = static_cast<int>(std::min<uint64_t>(*size - offset, 1u << 30));
    rc = MPI_Ibcast(bytes.data() + offset, chunk, MPI_CHAR, root, channels_->comm[kBroadcast], &request);
    if (rc != MPI_SUCCESS) return MpiError("MPI_Ibcast", rc);
    if (absl::Status s = Wait(&request, "MPI_Ibcast", deadline, /*watch=*/true, /*bulk=*/chunk >= (1 << 20));
        !s.ok()) {
      AbandonToTransport(std::make_shared<std::string>(std::move(bytes)));
      bytes.clear();
      return s;
    }
    offset += static_cast<uint64_t>(chunk);
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::DoBarrier(absl::Time deadline) {
  MPI_Request request;
  int rc = MPI_Ibarrier(channels_->comm[kBarrier], &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Ibarrier", rc);
  return Wait(&request, "MPI_Ibarrier", deadline);
}

}  // namespace ember::dist
