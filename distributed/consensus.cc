#include "distributed/consensus.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ember::dist {

const char* ReductionName(Reduction r) {
  switch (r) {
    case Reduction::kSum:
      return "SUM";
    case Reduction::kMean:
      return "MEAN";
    case Reduction::kMin:
      return "MIN";
    case Reduction::kMax:
      return "MAX";
    case Reduction::kAnyNonZero:
      return "ANY";
  }
  return "?";
}

absl::Status Consensus::Reduce(absl::Span<const double> values, absl::Span<const Reduction> ops,
                               absl::Span<double> reduced, absl::Time deadline) {
  if (ops.size() != values.size() || reduced.size() != values.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Consensus::Reduce: ", values.size(), " values, ",
                                                   ops.size(), " reductions, ", reduced.size(),
                                                   " outputs"));
  }
  const int world = comm_->world_size();
  n_ = values.size();
  if (gathered_.size() < n_ * static_cast<size_t>(world)) gathered_.resize(n_ * static_cast<size_t>(world));
  absl::Span<double> recv(gathered_.data(), n_ * static_cast<size_t>(world));
  if (absl::Status s = comm_->AllGather(values, recv, deadline); !s.ok()) return s;
  for (size_t i = 0; i < n_; ++i) {
    double acc = gathered_[i];
    for (int r = 1; r < world; ++r) {
      const double v = gathered_[static_cast<size_t>(r) * n_ + i];
      switch (ops[i]) {
        case Reduction::kSum:
        case Reduction::kMean:
          acc += v;
          break;
        case Reduction::kMin:
          if (std::isnan(acc) || v < acc) acc = std::isnan(v) ? acc : v;
          break;
        case Reduction::kMax:
          if (std::isnan(acc) || v > acc) acc = std::isnan(v) ? acc : v;
          break;
        case Reduction::kAnyNonZero:
          acc = (acc != 0 || v != 0) ? 1.0 : 0.0;
          break;
      }
    }
    if (ops[i] == Reduction::kMean) acc /= world;
    if (ops[i] == Reduction::kAnyNonZero) acc = acc != 0 ? 1.0 : 0.0;
    reduced[i] = acc;
  }
  return absl::OkStatus();
}

}  // namespace ember::dist
