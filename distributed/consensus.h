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
// Identity (checked, not assumed): every agreement of several ranks carries, in the slots it
// already exchanges, a header: a sequence number (per Consensus), the event and iteration, the
// number of values and a digest of the layout (which handlers, each by type, label (the score
// name, the filename prefix) and event filter with its arguments, propose how many values with
// which reductions, in which order; Engine builds and hashes it once at registration). The exchange has a fixed size (kAgreementSlots doubles per rank:
// the header and up to kAgreementInline values), so that ranks that disagree on the number of
// values never hand the transport buffers of different sizes; more values take a second
// exchange, issued only once the headers agreed. Every rank compares every rank's header with
// its own BEFORE any value is reduced; on a mismatch every rank exchanges a description of its
// side (rare: only then), poisons the communicator and returns kFailedPrecondition naming the
// ranks and the difference ("agreement #12 differs: rank 0 at COMPLETED (iteration 200):
// Checkpoint(1 MAX) then EarlyStopping(1 MEAN); rank 1 at COMPLETED (iteration 200):
// EarlyStopping(1 MEAN) then Checkpoint(1 MAX)"). Cost: 192 bytes per rank per agreement instead
// of 8 per value; the same single collective.
//
// Thread safety: as the Communicator (one thread). Reduce does not allocate after its first call.
#ifndef EMBER_DISTRIBUTED_CONSENSUS_H_
#define EMBER_DISTRIBUTED_CONSENSUS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

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

// The identity of one agreement (see above).
struct AgreementId {
  uint64_t event = 0;      // the event's id (kNoEvent outside an event firing)
  int64_t iteration = 0;   // the engine's iteration
  uint64_t layout = 0;     // LayoutDigest of the proposing handlers
  // This rank's side in words, called only on a mismatch: "at COMPLETED (iteration 200):
  // Checkpoint(1 MAX) then EarlyStopping(1 MEAN)".
  std::function<std::string()> describe;
  static constexpr uint64_t kNoEvent = ~uint64_t{0};
};

// Header doubles per rank, values that travel with them, and the fixed slots per rank.
inline constexpr size_t kAgreementHeader = 5;
inline constexpr size_t kAgreementInline = 19;
inline constexpr size_t kAgreementSlots = kAgreementHeader + kAgreementInline;

// Mixes one handler (its name, its reductions) into a layout digest (FNV-1a; start from
// kLayoutSeed).
inline constexpr uint64_t kLayoutSeed = 1469598103934665603ull;
uint64_t LayoutDigest(uint64_t digest, const std::string& name, absl::Span<const Reduction> ops);

class Consensus {
 public:
  explicit Consensus(Communicator* comm) : comm_(comm) {}

  Communicator* comm() const { return comm_; }

  // Reduces values[i] with ops[i] across ranks into reduced[i]; per_rank (world_size * n)
  // receives every rank's values (rank r's value i at r * n + i). MIN and MAX ignore NaN unless
  // every rank proposed NaN; SUM and MEAN propagate it. With several ranks, `id` travels with the
  // values and is checked first (above).
  absl::Status Reduce(absl::Span<const double> values, absl::Span<const Reduction> ops,
                      absl::Span<double> reduced, absl::Span<double> per_rank,
                      absl::Time deadline, const AgreementId& id = {});

  // For an agreement carried by another collective (Engine::ProposeAhead, DataParallel): writes
  // the header of the next agreement (taking its sequence number) and up to kAgreementInline
  // values (zeros after them) into `slots` (kAgreementSlots).
  void Pack(const AgreementId& id, absl::Span<const double> values, absl::Span<double> slots);
  // Checks the headers of every rank's slots (world_size * kAgreementSlots, as gathered) against
  // this rank's; on a mismatch as Reduce does (description exchange, poison, error).
  absl::Status CheckGathered(absl::Span<const double> gathered, const AgreementId& id, absl::Time deadline);
  // Number of agreements packed or reduced (the next sequence number).
  uint64_t sequence() const { return seq_; }

  // The local half of Reduce, for values gathered by another collective (an agreement carried
  // in a gradient all-reduce): reduces per_rank (world_size * n, rank r's value i at r * n + i)
  // with ops[i] into reduced[i], exactly as Reduce does after its all-gather.
  static absl::Status ReduceGathered(absl::Span<const double> per_rank, absl::Span<const Reduction> ops,
                                     absl::Span<double> reduced, int world_size);

  // The description exchange of a mismatch, and the error (the communicator is poisoned with it).
  // Every rank must call it (every rank saw the same headers).
  static absl::Status Mismatch(Communicator& comm, absl::Span<const double> gathered, const AgreementId& id,
                               absl::Time deadline);

 private:
  Communicator* comm_;
  uint64_t seq_ = 0;
  std::vector<double> slots_;     // this rank's slots
  std::vector<double> gathered_;  // every rank's
};

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_CONSENSUS_H_
