// File: distributed/single_process_communicator.h
//
// SingleProcessCommunicator: world size 1. Every collective completes at once and leaves its
// buffer as it is (the reduction of one value is itself), so single-process runs take exactly
// the code path of distributed ones. Thread-compatible.
#ifndef EMBER_DISTRIBUTED_SINGLE_PROCESS_COMMUNICATOR_H_
#define EMBER_DISTRIBUTED_SINGLE_PROCESS_COMMUNICATOR_H_

#include <algorithm>
#include <string>

#include "distributed/communicator.h"

namespace ember::dist {

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string backend() const override { return "single"; }

 protected:
  absl::Status DoAllReduce(absl::Span<double>, ReduceOp, absl::Time) override { return absl::OkStatus(); }
  absl::Status DoAllReduce(absl::Span<float>, ReduceOp, absl::Time) override { return absl::OkStatus(); }
  absl::Status DoAllGather(absl::Span<const double> send, absl::Span<double> recv, absl::Time) override {
    std::copy(send.begin(), send.end(), recv.begin());
    return absl::OkStatus();
  }
  absl::Status DoBroadcast(std::string&, int, absl::Time) override { return absl::OkStatus(); }
  absl::Status DoBarrier(absl::Time) override { return absl::OkStatus(); }
};

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_SINGLE_PROCESS_COMMUNICATOR_H_
