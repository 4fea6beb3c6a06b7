#include "distributed/mpi_communicator.h"

#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <cstring>
#include <thread>
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

}  // namespace

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
