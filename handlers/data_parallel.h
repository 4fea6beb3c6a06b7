// File: handlers/data_parallel.h
//
// DataParallel: the gradient averaging of data-parallel training, as one object. Constructed on
// every rank with the same module, it broadcasts the module's parameters and buffers from rank 0
// (so ranks that initialised differently start equal) and, after each backward, AllReduceGradients
// averages every parameter's gradient over the ranks: the gradients are packed into buckets of at
// most `bucket_bytes`, one all-reduce (SUM, then / world size) per bucket, in the order of
// module.parameters(). A parameter without a gradient in a step takes part as zeros (as if it
// contributed nothing on this rank), so the ranks always issue the same collectives.
//
// The communicator is the process's default (the World of dist::LaunchWorld()) unless one is
// given (without either, this process is the whole job and nothing is exchanged). Every wait is
// bounded by `deadline`; an error names the bucket and its parameters.
// Tensors are staged through host memory (CPU today; the device-native path is the GPU issue's).
//
// Thread safety: not thread-safe; call from the training thread on every rank.
//
// Example (after loss.backward(), before optimizer.step()):
//   ember::DataParallel ddp(*model);                      // broadcasts rank 0's parameters
//   EMBER_RETURN_IF_ERROR(ddp.status());
//   ...
//   EMBER_RETURN_IF_ERROR(ddp.AllReduceGradients());
#ifndef EMBER_HANDLERS_DATA_PARALLEL_H_
#define EMBER_HANDLERS_DATA_PARALLEL_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"

namespace ember {

struct DataParallelOptions {
  int64_t bucket_bytes = int64_t{16} << 20;
  absl::Duration deadline = absl::Seconds(300);  // per collective
  dist::Communicator* comm = nullptr;            // default: dist::DefaultCommunicator()
};

class DataParallel {
 public:
  explicit DataParallel(torch::nn::Module& module, DataParallelOptions options = {});

  // The outcome of the broadcast at construction.
  const absl::Status& status() const { return status_; }
  // Averages the gradients over the ranks (a collective: every rank, every step).
  absl::Status AllReduceGradients();

  int world_size() const { return comm_ != nullptr ? comm_->world_size() : 1; }
  size_t num_buckets() const { return buckets_.size(); }

 private:
  absl::Status Broadcast(torch::nn::Module& module);

  dist::Communicator* comm_;  // nullptr: no World, one process
  DataParallelOptions options_;
  std::vector<torch::Tensor> params_;
  std::vector<std::string> names_;
  std::vector<std::vector<size_t>> buckets_;  // indices into params_
  std::vector<torch::Tensor> flat_;            // one host float buffer per bucket
  absl::Status status_;
};

}  // namespace ember

#endif  // EMBER_HANDLERS_DATA_PARALLEL_H_
