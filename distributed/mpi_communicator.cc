#include "distributed/mpi_communicator.h"

#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
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

// Polls `request` until it completes or `deadline` passes. Spins briefly (collectives of a few
// bytes finish in microseconds), then yields, then sleeps, so that oversubscribed ranks make
// progress.
absl::Status Wait(MPI_Request* request, const char* what, absl::Time deadline) {
  int done = 0;
  for (int64_t polls = 0;; ++polls) {
    int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return MpiError(what, rc);
    if (done) return absl::OkStatus();
    if (polls < 64) continue;
    if ((polls & 63) == 0 && absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": not every rank joined before the deadline (a rank stalled, died "
                             "or is running a different collective)"));
    }
    if (polls < 20000) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
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

// A posted MPI_Iallreduce.
class MpiPending final : public Pending {
 public:
  MpiPending(MPI_Request request, absl::Time deadline, std::string what)
      : request_(request), deadline_(deadline), what_(std::move(what)) {}
  absl::Status Wait() override {
    if (!done_) {
      status_ = ::ember::dist::Wait(&request_, what_.c_str(), deadline_);
      done_ = true;
    }
    return status_;
  }

 private:
  MPI_Request request_;
  absl::Time deadline_;
  std::string what_;
  bool done_ = false;
  absl::Status status_;
};

}  // namespace

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
  int rc = MPI_Iallreduce(MPI_IN_PLACE, b.data, static_cast<int>(b.count), type, mpi_op, MPI_COMM_WORLD, &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Iallreduce", rc);
  return std::unique_ptr<Pending>(
      new MpiPending(request, deadline, absl::StrCat("MPI_Iallreduce of ", b.DebugString())));
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
    char name[MPI_MAX_PROCESSOR_NAME] = {};
    int len = 0;
    MPI_Get_processor_name(name, &len);
    std::vector<char> all(static_cast<size_t>(MPI_MAX_PROCESSOR_NAME) * comm->world_size_);
    MPI_Request request;
    int rc = MPI_Iallgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME,
                            MPI_CHAR, MPI_COMM_WORLD, &request);
    if (rc != MPI_SUCCESS) return MpiError("MPI_Iallgather (host names)", rc);
    if (absl::Status s = Wait(&request, "MPI_Iallgather (host names)", deadline); !s.ok()) {
      comm->Poison(s);  // a peer never joined: MPI_Finalize would block on it
      return s;
    }
    for (int r = 0; r < comm->rank_; ++r) {
      if (std::strncmp(all.data() + static_cast<size_t>(r) * MPI_MAX_PROCESSOR_NAME, name, MPI_MAX_PROCESSOR_NAME) == 0) {
        ++comm->local_rank_;
      }
    }
  }
  return comm;
}

MpiCommunicator::~MpiCommunicator() {
  // After a failed collective MPI_Finalize may block forever on the peers; leave it undone.
  if (finalize_ && poisoned().ok()) MPI_Finalize();
}

absl::Status MpiCommunicator::DoAllReduce(absl::Span<double> values, ReduceOp op,
                                          absl::Time deadline) {
  if (values.size() > INT_MAX) return absl::InvalidArgumentError("AllReduce: too many values");
  MPI_Request request;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_DOUBLE,
                          ToMpi(op), MPI_COMM_WORLD, &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Iallreduce", rc);
  return Wait(&request, "MPI_Iallreduce", deadline);
}

absl::Status MpiCommunicator::DoAllReduce(absl::Span<float> values, ReduceOp op,
                                          absl::Time deadline) {
  if (values.size() > INT_MAX) return absl::InvalidArgumentError("AllReduce: too many values");
  MPI_Request request;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_FLOAT,
                          ToMpi(op), MPI_COMM_WORLD, &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Iallreduce", rc);
  return Wait(&request, "MPI_Iallreduce", deadline);
}

absl::Status MpiCommunicator::DoAllGather(absl::Span<const double> send, absl::Span<double> recv,
                                          absl::Time deadline) {
  MPI_Request request;
  int rc = MPI_Iallgather(send.data(), static_cast<int>(send.size()), MPI_DOUBLE, recv.data(),
                          static_cast<int>(send.size()), MPI_DOUBLE, MPI_COMM_WORLD, &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Iallgather", rc);
  return Wait(&request, "MPI_Iallgather", deadline);
}

absl::Status MpiCommunicator::DoBroadcast(std::string& bytes, int root, absl::Time deadline) {
  uint64_t size = bytes.size();
  MPI_Request request;
  int rc = MPI_Ibcast(&size, 1, MPI_UINT64_T, root, MPI_COMM_WORLD, &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Ibcast", rc);
  EMBER_RETURN_IF_ERROR(Wait(&request, "MPI_Ibcast", deadline));
  bytes.resize(size);
  for (uint64_t offset = 0; offset < size;) {
    const int chunk = static_cast<int>(std::min<uint64_t>(size - offset, 1u << 30));
    rc = MPI_Ibcast(bytes.data() + offset, chunk, MPI_CHAR, root, MPI_COMM_WORLD, &request);
    if (rc != MPI_SUCCESS) return MpiError("MPI_Ibcast", rc);
    EMBER_RETURN_IF_ERROR(Wait(&request, "MPI_Ibcast", deadline));
    offset += static_cast<uint64_t>(chunk);
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::DoBarrier(absl::Time deadline) {
  MPI_Request request;
  int rc = MPI_Ibarrier(MPI_COMM_WORLD, &request);
  if (rc != MPI_SUCCESS) return MpiError("MPI_Ibarrier", rc);
  return Wait(&request, "MPI_Ibarrier", deadline);
}

}  // namespace ember::dist
