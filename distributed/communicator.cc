#include "distributed/communicator.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ember::dist {

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "SUM";
    case ReduceOp::kMin:
      return "MIN";
    case ReduceOp::kMax:
      return "MAX";
  }
  return "?";
}

template <typename F>
absl::Status Communicator::Guard(const char* what, F&& f) {
  if (!poison_.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " on a communicator poisoned by an earlier error: ", poison_.message()));
  }
  collectives_.fetch_add(1, std::memory_order_relaxed);
  absl::Status s = f();
  if (!s.ok()) poison_ = s;
  return s;
}

absl::Status Communicator::AllReduce(absl::Span<double> values, ReduceOp op, absl::Time deadline) {
  return Guard("AllReduce", [&] { return DoAllReduce(values, op, deadline); });
}

absl::Status Communicator::AllReduce(absl::Span<float> values, ReduceOp op, absl::Time deadline) {
  return Guard("AllReduce", [&] { return DoAllReduce(values, op, deadline); });
}

absl::Status Communicator::AllGather(absl::Span<const double> send, absl::Span<double> recv,
                                     absl::Time deadline) {
  if (recv.size() != send.size() * static_cast<size_t>(world_size())) {
    return absl::InvalidArgumentError(absl::StrCat("AllGather: recv holds ", recv.size(),
                                                   " values, expected world_size * send = ",
                                                   world_size() * send.size()));
  }
  return Guard("AllGather", [&] { return DoAllGather(send, recv, deadline); });
}

absl::Status Communicator::Broadcast(std::string& bytes, int root, absl::Time deadline) {
  if (root < 0 || root >= world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Broadcast: root ", root, " is not a rank of a world of ", world_size()));
  }
  return Guard("Broadcast", [&] { return DoBroadcast(bytes, root, deadline); });
}

absl::Status Communicator::Barrier(absl::Time deadline) {
  return Guard("Barrier", [&] { return DoBarrier(deadline); });
}

}  // namespace ember::dist
