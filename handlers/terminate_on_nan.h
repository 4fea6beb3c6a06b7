// File: handlers/terminate_on_nan.h
//
// TerminateOnNan (ignite's): at ITERATION_COMPLETED, checks the step's output and terminates
// the engine it is attached to when a value is NaN or infinite. Output kinds: numbers
// (double, float, integers, bool), torch::Tensor of any dtype and device (integer and empty
// tensors count as finite), ember::Value trees (lists, tuples, dicts of those; strings are
// skipped), std::vector<double|float|torch::Tensor> and std::map<std::string, double|Tensor>.
// An optional output_transform picks what to check. A step that returned nothing, or an output
// of another type, is an error that fails the run with a clear message (ignite: TypeError).
//
// Multi-rank: it is a SynchronizedHandler. Every rank proposes its "saw a non-finite value" flag
// and the flags are reduced in the firing's one collective, so if ANY rank saw NaN, EVERY rank
// terminates at that same iteration; the warning names the ranks that saw it.
//
// Example:
//   trainer.On(ember::Events::IterationCompleted(), ember::TerminateOnNan());
#ifndef EMBER_HANDLERS_TERMINATE_ON_NAN_H_
#define EMBER_HANDLERS_TERMINATE_ON_NAN_H_

#include <any>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "engine/synchronized_handler.h"

namespace ember {

class TerminateOnNan : public SynchronizedHandler {
 public:
  // What engine.outcome().terminated_by says when this handler stopped the run.
  static constexpr char kName[] = "TerminateOnNan";
  using OutputTransform = std::function<std::any(const std::any&)>;
  explicit TerminateOnNan(OutputTransform output_transform = nullptr)
      : transform_(std::move(output_transform)) {}

  // Whether `output` holds a non-finite value; an error for empty or unsupported outputs.
  static absl::StatusOr<bool> HasNonFinite(const std::any& output);

  // After a termination: the iteration and the ranks that saw the non-finite value.
  std::optional<int64_t> terminated_at() const { return terminated_at_; }
  const std::vector<int>& bad_ranks() const { return bad_ranks_; }

  size_t num_values() const override { return 1; }
  dist::Reduction reduction(size_t) const override { return dist::Reduction::kAnyNonZero; }
  absl::Status Propose(Engine& engine, absl::Span<double> values) override;
  absl::Status Decide(Engine& engine, const Agreement& agreement) override;
  // Its proposal reads only the step's output: it can ride the step's collective.
  bool proposes_in_step() const override { return true; }

 private:
  OutputTransform transform_;
  std::optional<int64_t> terminated_at_;
  std::vector<int> bad_ranks_;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_TERMINATE_ON_NAN_H_
