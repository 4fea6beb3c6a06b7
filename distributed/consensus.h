// File: distributed/consensus.h
//
// Consensus: reduces the values that the handlers of one event firing propose, across all
// ranks, in ONE collective, so that every rank takes the same decision at the same iteration.
//
// The values are all-gathered (one Communicator::AllGather of n doubles per rank; a copy when the
// communicator has one rank) and reduced
// locally, in rank order, with each value's own reduction (SUM, MEAN, MIN, MAX, ...): one
// collective serves handlers that need different reductions, every rank computes bit-identical
// results (the same operations in the same order), and each rank's own proposal stays
// available (to report WHICH ranks saw a NaN). For the few doubles of a firing the all-gather
// costs what an all-reduce does (both latency-bound); see docs/performance.md.
//
// Thread safety: as the Communicator (one thread). Reduce does not allocate.
#ifndef EMBER_DISTRIBUTED_CONSENSUS_H_
#define EMBER_DISTRIBUTED_CONSENSUS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "distributed/communicator.h"

namespace ember::dist {

enum class Reduction : uint8_t {
  kSum,
  kMean,
  kMin,
  kMax,
  kAnyNonZero,  // 1 if any rank proposed a non-zero value (NaN counts as non-zero), else 0
};

const char* ReductionName(Reduction r);

class Consensus {
 public:
  explicit Consensus(Communicator* comm) : comm_(comm) {}

  Communicator* comm() const { return comm_; }

  // Reduces values[i] with ops[i] across ranks into reduced[i]; per_rank (world_size * n)
  // receives every rank's values (rank r's value i at r * n + i). MIN and MAX ignore NaN unless
  // every rank proposed NaN; SUM and MEAN propagate it.
  absl::Status Reduce(absl::Span<const double> values, absl::Span<const Reduction> ops,
                      absl::Span<double> reduced, absl::Span<double> per_rank,
                      absl::Time deadline);

  // The local half of Reduce, for values gathered by another collective (an agreement carried
  // in a gradient all-reduce): reduces per_rank (world_size * n, rank r's value i at r * n + i)
  // with ops[i] into reduced[i], exactly as Reduce does after its all-gather.
  static absl::Status ReduceGathered(absl::Span<const double> per_rank, absl::Span<const Reduction> ops,
                                     absl::Span<double> reduced, int world_size);

 private:
  Communicator* comm_;
};

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_CONSENSUS_H_
