// File: engine/synchronized_handler.h
//
// SynchronizedHandler: a handler whose decision must be the same on every rank (TerminateOnNan,
// EarlyStopping, Checkpoint). At an event firing, each such handler first proposes a fixed
// number of values (a NaN flag, a score), the engine reduces the proposals of ALL synchronized
// handlers due at that firing in ONE collective (distributed/consensus.h), and then each handler
// decides on the reduced values, in registration order, after the plain handlers of the firing
// have run. Every rank registers the same handlers in the same order, so every rank proposes the
// same number of values at the same firings, and decides identically.
//
// Propose runs at the handler's place among the event's handlers (so it sees what earlier
// handlers did, e.g. metrics an evaluator just computed); Decide runs at the end of the firing.
#ifndef EMBER_ENGINE_SYNCHRONIZED_HANDLER_H_
#define EMBER_ENGINE_SYNCHRONIZED_HANDLER_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "distributed/consensus.h"

namespace ember {

class Engine;

// The outcome of one firing's reduction, as one handler sees it.
class Agreement {
 public:
  Agreement(absl::Span<const double> reduced, absl::Span<const double> per_rank, size_t offset,
            size_t stride, int world_size)
      : reduced_(reduced), per_rank_(per_rank), offset_(offset), stride_(stride), world_size_(world_size) {}

  // The reduced value i of this handler.
  double value(size_t i) const { return reduced_[i]; }
  // What rank r proposed as value i.
  double rank_value(int rank, size_t i) const { return per_rank_[rank * stride_ + offset_ + i]; }
  int world_size() const { return world_size_; }

 private:
  absl::Span<const double> reduced_;
  absl::Span<const double> per_rank_;
  size_t offset_;
  size_t stride_;
  int world_size_;
};

class SynchronizedHandler {
 public:
  virtual ~SynchronizedHandler() = default;
  // How many values this handler proposes at every firing (fixed).
  virtual size_t num_values() const = 0;
  // The reduction of value i (fixed).
  virtual dist::Reduction reduction(size_t i) const = 0;
  // Writes this rank's num_values() values.
  virtual absl::Status Propose(Engine& engine, absl::Span<double> values) = 0;
  // Acts on the agreed values (terminate, save, ...).
  virtual absl::Status Decide(Engine& engine, const Agreement& agreement) = 0;
  // Whether Propose at ITERATION_COMPLETED reads only the step's output and process-wide state
  // (not what other handlers of the firing did), so that it may run inside the step function,
  // before the firing, and its agreement ride in the step's own collective (Engine::ProposeAhead,
  // DataParallel). TerminateOnNan and Preemption can; the default is no.
  virtual bool proposes_in_step() const { return false; }
  // What tells this handler from another of its type, for the layout the ranks agree on (the
  // start agreement and each firing's layout digest, read once when it is registered): e.g.
  // "score=accuracy" for an EarlyStopping on a named score. Empty (the default) when there is
  // nothing to tell (a score function, a handler that is one of a kind).
  virtual std::string label() const { return {}; }
};

}  // namespace ember

#endif  // EMBER_ENGINE_SYNCHRONIZED_HANDLER_H_
