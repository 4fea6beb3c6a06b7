// File: handlers/parallel/data_parallel.h
//
// DataParallel: the gradient averaging of data-parallel training, as one object. Constructed on
// every rank with the same module, it first checks that every rank holds the same parameters and
// buffers (each one's name, shape, dtype and whether it takes a gradient) and the same bucket_bytes
// and overlap (dist::AgreeOnSettings, "DataParallel parameters": one small all-reduce; a mismatch
// is status() on every rank, naming each differing entry and each rank's value, and poisons the
// communicator), then broadcasts the module's parameters and buffers from rank 0 (so ranks that
// initialised differently start equal). Gradients are averaged over the ranks in
// buckets of at most `bucket_bytes` (one all-reduce each: SUM, then / world size), formed in
// reverse parameter order, the order in which backward produces them, and per device and dtype.
//
// Overlap (the default, like PyTorch DDP's Reducer): a hook on each parameter's gradient
// accumulator marks it ready during backward; as soon as every parameter of the next bucket in
// order is ready, that bucket is packed and its all-reduce started (MPI_Iallreduce on the host;
// on a GPU with the NCCL backend, the bucket stays on the device and is enqueued on NCCL's
// stream), so communication runs while the rest of backward computes. AllReduceGradients(), after
// backward, starts the buckets still unsent, waits for all of them and writes the averages into
// the gradients. Buckets start in the same order on every rank, whatever the timing. Without
// overlap, AllReduceGradients packs and reduces every bucket itself; both give bitwise the same
// averages.
//
// A parameter without a gradient in a step takes part as zeros (as if it contributed nothing on
// this rank), so the ranks always issue the same collectives. One backward per step: a second
// gradient for a parameter whose bucket was already sent is an error that says so (accumulating
// gradients over several backward passes needs overlap = false). On a backend that reduces host
// buffers only (MPI) gradients on a GPU are staged through the host, and staged_buckets() counts
// it; with NCCL it stays 0. CUDA gradients are taken as produced on the legacy default stream
// (the one LibTorch uses unless a stream guard says otherwise): NCCL's stream waits on an event
// recorded there. A step run under another CUDA stream must synchronize that stream with the
// default one before backward.
//
// The last bucket (it holds the first parameters, whose gradients backward produces last) is
// always started by AllReduceGradients itself, never by a hook, so that it can carry the
// engine's per-iteration agreement: AllReduceGradients(engine, output) appends every rank's
// proposals of ITERATION_COMPLETED (TerminateOnNan's flag, Preemption's signal) to it, each
// rank's 8 bytes per value in slots of its own that the other ranks leave zero, so the SUM
// all-reduce is an exact all-gather in any floating dtype (a byte 0-255 is exact in float16
// and bfloat16, and x + 0 is x); the engine then decides at the firing without a collective of
// its own, and a step costs exactly its gradient buckets (carried_agreements() counts them).
//
// Identity: with several ranks the last bucket always carries dist::kAgreementSlots values per
// rank (the engine's agreement with its identity, or, without an engine, an identity of the step
// itself: consensus.h), the same size on every rank whatever handlers a rank registered; every
// rank checks every rank's identity before the averages are used, so ranks that diverged (a
// handler registered on one rank only, another order, a step without the engine on one rank)
// fail on every rank with an error naming the difference. A rank-local error in a step (a second
// gradient, a failed proposal) fails the communicator (Communicator::Fail): the peers, waiting
// for buckets this rank never starts, fail promptly with "rank R failed: <error>".
//
// The communicator is the process's default (the World of dist::LaunchWorld()) unless one is
// given (without either, this process is the whole job and nothing is exchanged). Every wait is
// bounded by `deadline`; an error names the bucket, its parameters and the step.
//
// World size 1: by default nothing is packed or reduced (the average of one rank's gradients is
// itself). `reduce_alone` runs the bucket path anyway, as PyTorch DDP's Reducer does at world
// size 1: the hooks, the packing, one all-reduce per bucket through the communicator (NCCL's
// kernels on a GPU; a SingleProcessCommunicator of its own when there is none) and the copy back.
// The gradients are bitwise the same either way (a parameter without a gradient keeps none); it
// exists to compare step times fairly with DDP at world size 1 (tools/gpu/gpu_checks.sh,
// tools/bench/ddp_side_by_side.sh). On a GPU that needs the NCCL backend: a communicator that
// reduces host buffers only (a SingleProcessCommunicator included) stages every bucket through
// the host, which DDP does not. With several ranks it changes nothing.
//
// AllReduceGradients() is also the step's fence for background checkpoint snapshots: on its way
// out (every world size, errors included) it calls ember::WaitForSnapshots() (snapshot_fence.h),
// so the optimizer step that follows never changes a tensor a Checkpoint with
// snapshot_in_background is still copying.
//
// Thread safety: not thread-safe; construct it and call AllReduceGradients from the training
// thread on every rank. The hooks run on autograd's threads while that thread waits in backward.
//
// Example (after loss.backward(), before optimizer.step()):
//   ember::DataParallel ddp(*model);                      // broadcasts rank 0's parameters
//   EMBER_RETURN_IF_ERROR(ddp.status());
//   ...
//   loss.backward();                                      // buckets start as gradients arrive
//   EMBER_RETURN_IF_ERROR(ddp.AllReduceGradients());
// or, inside an Engine's step function, carrying its agreement (one collective fewer per step):
//   const double out = loss.item<double>();
//   EMBER_RETURN_IF_ERROR(ddp.AllReduceGradients(engine, out));
//   optimizer.step();
//   return out;
#ifndef EMBER_HANDLERS_DATA_PARALLEL_H_
#define EMBER_HANDLERS_DATA_PARALLEL_H_

#include <torch/csrc/autograd/function.h>
#include <torch/torch.h>

#include <any>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "distributed/communicator.h"
#include "engine/engine.h"

namespace ember {

struct DataParallelOptions {
  int64_t bucket_bytes = int64_t{16} << 20;
  absl::Duration deadline = absl::Seconds(300);  // per collective, from the moment it starts
  dist::Communicator* comm = nullptr;            // default: dist::DefaultCommunicator()
  bool overlap = true;                           // start buckets during backward
  bool reduce_alone = false;                     // world size 1: reduce through the communicator anyway
};

class DataParallel {
 public:
  explicit DataParallel(torch::nn::Module& module, DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // The outcome of the broadcast at construction.
  const absl::Status& status() const { return status_; }
  // Averages the gradients over the ranks (a collective: every rank, every step).
  absl::Status AllReduceGradients();
  // The same, inside `engine`'s step function, carrying the engine's per-iteration agreement
  // (TerminateOnNan's flag, Preemption's signal: Engine::ProposeAhead) in the last bucket's
  // all-reduce, so that the step costs its gradient buckets and nothing more: the
  // ITERATION_COMPLETED firing that follows decides without a collective of its own.
  // `step_output` must be what the step function returns (TerminateOnNan checks it here).
  // Without an engine (or when the engine agrees through another communicator), the firing
  // agrees in its own collective as before.
  absl::Status AllReduceGradients(Engine& engine, const std::any& step_output);

  int world_size() const { return comm_ != nullptr ? comm_->world_size() : 1; }
  // Whether the gradients go through the communicator: several ranks, or reduce_alone.
  bool reduces() const { return comm_ != nullptr && (comm_->world_size() > 1 || options_.reduce_alone); }
  // The communicator the gradients are averaged through (nullptr: this process is the whole
  // job), and whether buckets start during backward (accumulating gradients over several
  // backward passes before one AllReduceGradients, as SupervisedStep does, needs overlap false).
  dist::Communicator* communicator() const { return comm_; }
  bool overlap() const { return options_.overlap; }
  size_t num_buckets() const { return buckets_.size(); }
  // Buckets started during backward so far (overlap), and in all.
  int64_t buckets_started_early() const { return started_early_; }
  int64_t buckets_reduced() const { return reduced_; }
  // Buckets copied through the host because the backend reduces host buffers only.
  int64_t staged_buckets() const { return staged_; }
  // Steps completed (AllReduceGradients calls that succeeded).
  int64_t steps() const { return step_; }
  // Steps whose engine agreement rode in the last bucket.
  int64_t carried_agreements() const { return carried_; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    int64_t numel = 0;           // the gradients' elements in flat
    torch::Tensor flat;          // the packed gradients (then any carried agreement), where the collective runs
    bool staged = false;         // flat is a host copy of device gradients
    int unready = 0;             // parameters of this step still without their gradient
    std::unique_ptr<dist::Pending> pending;
  };
  class ReadyHook;

  absl::Status Broadcast(torch::nn::Module& module);
  void OnGradientReady(size_t param);    // from the hooks
  // Packs and starts one bucket's all-reduce; the last one may carry this rank's agreement values.
  void Abandon(Bucket& bucket);
  absl::Status Start(size_t bucket, absl::Span<const double> carry = {});
  absl::Status Reduce(Engine* engine, const std::any* step_output);
  // Decodes every rank's carried values from the reduced last bucket and gives them to engine
  // (which checks their identity), or checks the identity of a step without one.
  absl::Status HandBackAgreement(Engine* engine, const Bucket& bucket, size_t n);
  dist::AgreementId StepId() const;
  std::string Describe(size_t bucket) const;

  dist::Communicator* comm_;  // nullptr: no World, one process
  std::unique_ptr<dist::Communicator> own_comm_;  // reduce_alone without a communicator
  DataParallelOptions options_;
  std::vector<torch::Tensor> params_;
  std::vector<std::string> names_;
  // buckets_, ready_, next_, hook_error_ and the counters are written by the gradient hooks,
  // which run while the training thread is blocked inside backward() (on the CPU on that thread,
  // on a GPU on autograd's device thread, which starts collectives with NCCL only), and read by
  // the training thread after backward() returned (its completion orders them).
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;  // per parameter
  std::vector<bool> ready_;        // per parameter, this step
  size_t next_ = 0;                // the next bucket to start, this step
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks_;
  std::thread::id owner_;
  bool hooks_may_start_ = false;   // the hooks' thread may issue collectives
  absl::Status hook_error_;
  int64_t started_early_ = 0, reduced_ = 0, staged_ = 0, step_ = 0, carried_ = 0;
  // The identity of a step that carries no engine agreement (sequence numbers of its own).
  std::unique_ptr<dist::Consensus> own_;
  std::vector<double> own_slots_;
  absl::Status status_;
  bool without_world_ = false;  // made with no World inside a multi-rank launch (status_ says so)
};

}  // namespace ember

#endif  // EMBER_HANDLERS_DATA_PARALLEL_H_
