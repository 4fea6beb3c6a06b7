// File: distributed/mpi_communicator.h
//
// MpiCommunicator: the Communicator over MPI_COMM_WORLD (OpenMPI 4.1 here). Each collective is
// the non-blocking MPI call (MPI_Iallreduce, MPI_Iallgather, MPI_Ibcast, MPI_Ibarrier) polled
// with MPI_Test until it completes or the deadline passes; so a dead or stalled peer gives
// kDeadlineExceeded, not a hang. MPI cannot cancel a collective: after a deadline the process
// must end (the destructor then skips MPI_Finalize, which would block).
//
// Matching spaces: Create duplicates MPI_COMM_WORLD once per kind of traffic (MPI_Comm_idup,
// bounded by init_timeout): gradient buffers (StartAllReduce), blocking all-reduces, all-gathers
// (the agreements), broadcasts, barriers, and control (Meet, failure notices). Collectives of
// different kinds never match each other (communicator.h).
//
// Failure notices: a receive on the control communicator is posted at start; the wait loop of
// every collective tests it once every 64 polls (the first poll included: one MPI_Test of a
// posted receive, well under a microsecond) and fails with the peer's notice when one arrived.
// Poisoning sends this rank's notice to every peer (MPI_Isend of at most 1 KiB each; the
// destructor gives them up to 2 s to leave).
//
// Create() initialises MPI (MPI_THREAD_FUNNELED) unless it already is; the destructor finalises
// it if Create initialised it and nothing failed. One per process. Used by one thread. Start-up
// is bounded too: without launcher variables the local rank comes from an all-gather of host
// names that fails with kDeadlineExceeded after `init_timeout`.
#ifndef EMBER_DISTRIBUTED_MPI_COMMUNICATOR_H_
#define EMBER_DISTRIBUTED_MPI_COMMUNICATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"

namespace ember::dist {

class MpiCommunicator final : public Communicator {
 public:
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create(
      absl::Duration init_timeout = absl::Seconds(300));
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  int local_rank() const override { return local_rank_; }
  std::string backend() const override { return "mpi"; }

 protected:
  absl::Status DoAllReduce(absl::Span<double> values, ReduceOp op, absl::Time deadline) override;
  absl::Status DoAllReduce(absl::Span<float> values, ReduceOp op, absl::Time deadline) override;
  absl::Status DoAllGather(absl::Span<const double> send, absl::Span<double> recv,
                           absl::Time deadline) override;
  absl::Status DoBroadcast(std::string& bytes, int root, absl::Time deadline) override;
  absl::Status DoBarrier(absl::Time deadline) override;
  // MPI_Iallreduce: returns once posted; float16 and bfloat16 through MPI operations of Ember's
  // own (accumulated in float32 per pair of operands, like NCCL).
  absl::StatusOr<std::unique_ptr<Pending>> DoStartAllReduce(const Buffer& buffer, ReduceOp op,
                                                            absl::Time deadline) override;
  void DoNotifyFailure(const absl::Status& error) override;
  absl::StatusOr<std::vector<int>> DoMeet(bool failed, absl::Time deadline) override;
  absl::Status ReceivedNotice() override;

 private:
  friend class MpiPending;
  struct Channels;  // the duplicated MPI communicators and the notice's requests (mpi.h stays out)
  MpiCommunicator();
  // Polls `request` (an MPI_Request*) until it completes, the deadline passes or (watch) a peer's
  // failure notice arrives. After its first polls a wait sleeps 100 us between polls, which keeps
  // a long wait for a late rank cheap; `bulk` (a transfer of many MiB, whose every fragment needs a
  // poll to progress) never sleeps, only yields: with the sleeps, a 512 MiB broadcast moved at
  // 0.2 GB/s against 3.5 GB/s (tools/bench/resume_benchmark).
  absl::Status Wait(void* request, const char* what, absl::Time deadline, bool watch = true, bool bulk = false);
  // In-place all-reduce of double or float values through staging memory (the .cc says why).
  template <typename T>
  absl::Status AllReduceStaged(absl::Span<T> values, ReduceOp op, absl::Time deadline);
  // Owned until the destructor, which leaves them to MPI (AbandonToTransport) when requests may
  // still be posted on them (MPI not finalized).
  std::unique_ptr<Channels> channels_;
  absl::Status peer_failure_;
  bool finalize_ = false;
  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
};

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_MPI_COMMUNICATOR_H_
