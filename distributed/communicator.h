// File: distributed/communicator.h
//
// Communicator: the collectives Ember needs across the ranks of a data-parallel job, behind one
// interface with a single-process, an MPI, an NCCL and an in-process fake (tests) backend.
//
// Contract (as c10d's ProcessGroup): every rank must call the collectives in the same order,
// with the same sizes; that is the only way calls match up across processes. Each call takes a
// deadline: if some rank has not joined by then, the call returns kDeadlineExceeded instead of
// hanging. After any non-OK result the communicator is poisoned: every later call returns
// kFailedPrecondition naming the first error (the peers' state is unknown; the job must end).
//
// Thread safety: a communicator is used by one thread at a time (the training thread); the
// counters may be read from any thread.
//
// Example:
//   double score = LocalScore();
//   EMBER_RETURN_IF_ERROR(comm->AllReduce(absl::MakeSpan(&score, 1), ReduceOp::kSum,
//                                         absl::Now() + absl::Seconds(60)));
//   score /= comm->world_size();
#ifndef EMBER_DISTRIBUTED_COMMUNICATOR_H_
#define EMBER_DISTRIBUTED_COMMUNICATOR_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace ember::dist {

enum class ReduceOp { kSum, kMin, kMax };

const char* ReduceOpName(ReduceOp op);

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // This rank's index among the ranks of its host (it picks the GPU).
  virtual int local_rank() const = 0;
  // "single", "mpi", "nccl", "fake".
  virtual std::string backend() const = 0;

  // In-place all-reduce of host buffers.
  absl::Status AllReduce(absl::Span<double> values, ReduceOp op, absl::Time deadline);
  absl::Status AllReduce(absl::Span<float> values, ReduceOp op, absl::Time deadline);
  // recv holds world_size() * send.size() values: rank r's send at [r * send.size(), ...).
  absl::Status AllGather(absl::Span<const double> send, absl::Span<double> recv,
                         absl::Time deadline);
  // Makes `bytes` on every rank equal to root's (any size).
  absl::Status Broadcast(std::string& bytes, int root, absl::Time deadline);
  absl::Status Barrier(absl::Time deadline);

  // Number of collectives issued so far (for tests and benchmarks: one per event firing).
  int64_t collectives() const { return collectives_.load(std::memory_order_relaxed); }
  // The error that poisoned the communicator, or OK.
  absl::Status poisoned() const { return poison_; }
  // Marks the communicator failed from outside (a communicator bootstrapped over it failed, a
  // start-up step timed out): later calls fail, and shutdown skips steps that would wait on the
  // peers. The first error is kept.
  void Poison(absl::Status error) {
    if (poison_.ok() && !error.ok()) poison_ = std::move(error);
  }

 protected:
  virtual absl::Status DoAllReduce(absl::Span<double> values, ReduceOp op, absl::Time deadline) = 0;
  virtual absl::Status DoAllReduce(absl::Span<float> values, ReduceOp op, absl::Time deadline) = 0;
  virtual absl::Status DoAllGather(absl::Span<const double> send, absl::Span<double> recv,
                                   absl::Time deadline) = 0;
  virtual absl::Status DoBroadcast(std::string& bytes, int root, absl::Time deadline) = 0;
  virtual absl::Status DoBarrier(absl::Time deadline) = 0;

 private:
  // Checks poisoning, counts, and poisons on error.
  template <typename F>
  absl::Status Guard(const char* what, F&& f);

  std::atomic<int64_t> collectives_{0};
  absl::Status poison_;
};

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_COMMUNICATOR_H_
