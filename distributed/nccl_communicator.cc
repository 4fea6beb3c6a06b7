// The NCCL backend (built when the build found NCCL; see nccl_communicator.h).
#include "distributed/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "distributed/file_rendezvous.h"
#include "distributed/tcp_rendezvous.h"

namespace ember::dist {
namespace {

absl::Status CudaError(const char* what, cudaError_t e) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::Status NcclError(const char* what, ncclResult_t r) {
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

ncclRedOp_t ToNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kMax:
      return ncclMax;
  }
  return ncclSum;
}

class NcclCommunicator final : public Communicator {
 public:
  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (poisoned().ok()) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    if (device_buffer_ != nullptr) cudaFree(device_buffer_);
    if (pinned_ != nullptr) cudaFreeHost(pinned_);
    if (staged_done_ != nullptr) cudaEventDestroy(staged_done_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  static absl::StatusOr<std::unique_ptr<Communicator>> Create(const NcclOptions& o) {
    std::unique_ptr<NcclCommunicator> c(new NcclCommunicator());
    c->rank_ = o.rank;
    c->world_size_ = o.world_size;
    c->local_rank_ = o.local_rank;
    int devices = 0;
    cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || devices == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "NCCL backend: no CUDA device visible to rank ", o.rank, " (",
          e == cudaSuccess ? "0 devices" : cudaGetErrorString(e), ")"));
    }
    c->device_ = o.local_rank % devices;
    if ((e = cudaSetDevice(c->device_)) != cudaSuccess) return CudaError("cudaSetDevice", e);
    if ((e = cudaStreamCreateWithFlags(&c->stream_, cudaStreamNonBlocking)) != cudaSuccess) {
      return CudaError("cudaStreamCreate", e);
    }
    if ((e = cudaEventCreateWithFlags(&c->staged_done_, cudaEventDisableTiming)) != cudaSuccess) {
      return CudaError("cudaEventCreate", e);
    }
    const absl::Time deadline = absl::Now() + o.init_timeout;
    ncclUniqueId id;
    if (o.rank == 0) {
      ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) return NcclError("ncclGetUniqueId", r);
    }
    std::string bytes(reinterpret_cast<const char*>(&id), sizeof(id));
    if (o.bootstrap != nullptr) {
      EMBER_RETURN_IF_ERROR(o.bootstrap->Broadcast(bytes, 0, deadline));
    } else if (!o.master_addr.empty()) {
      absl::StatusOr<std::string> shared = ShareFromRank0(o.rank, o.world_size, o.master_addr,
                                                          o.rendezvous_port, bytes, deadline);
      if (!shared.ok()) {
        return absl::Status(shared.status().code(),
                            absl::StrCat("NCCL unique id: ", shared.status().message(),
                                         " (the port is ", o.rendezvous_port_from.empty() ? "given"
                                                                                        : o.rendezvous_port_from,
                                         "; EMBER_RENDEZVOUS_PORT chooses another)"));
      }
      bytes = *std::move(shared);
    } else if (!o.rendezvous_file.empty()) {
      EMBER_ASSIGN_OR_RETURN(bytes, ShareThroughFile(o.rank, o.rendezvous_file, o.rendezvous_run_id,
                                                     bytes, deadline));
    } else if (o.world_size > 1) {
      return absl::InvalidArgumentError(
          "NCCL backend: no way to share the ncclUniqueId (give a bootstrap communicator, "
          "MASTER_ADDR and a rendezvous port, or a rendezvous file)");
    }
    if (bytes.size() != sizeof(id)) return absl::DataLossError("NCCL rendezvous: bad unique id");
    std::memcpy(&id, bytes.data(), sizeof(id));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&c->comm_, o.world_size, id, o.rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) return NcclError("ncclCommInitRankConfig", r);
    EMBER_RETURN_IF_ERROR(c->WaitComm("ncclCommInitRank", deadline));
    return std::unique_ptr<Communicator>(std::move(c));
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  int local_rank() const override { return local_rank_; }
  std::string backend() const override { return "nccl"; }
  bool device_buffers() const override { return true; }

 protected:
  absl::Status DoAllReduce(absl::Span<double> v, ReduceOp op, absl::Time deadline) override {
    return Staged(v.data(), v.size() * sizeof(double), v.data(), v.size() * sizeof(double), deadline,
                  [&](void* buf) {
                    return ncclAllReduce(buf, buf, v.size(), ncclFloat64, ToNccl(op), comm_, stream_);
                  });
  }
  absl::Status DoAllReduce(absl::Span<float> v, ReduceOp op, absl::Time deadline) override {
    return Staged(v.data(), v.size() * sizeof(float), v.data(), v.size() * sizeof(float), deadline,
                  [&](void* buf) {
                    return ncclAllReduce(buf, buf, v.size(), ncclFloat32, ToNccl(op), comm_, stream_);
                  });
  }
  absl::Status DoAllGather(absl::Span<const double> send, absl::Span<double> recv,
                           absl::Time deadline) override {
    const size_t in = send.size() * sizeof(double);
    return Staged(send.data(), in, recv.data(), recv.size() * sizeof(double), deadline,
                  [&](void* buf) {
                    // recv region starts at buf; rank r's slot is where our input must be.
                    char* base = static_cast<char*>(buf);
                    return ncclAllGather(base + rank_ * in, base, send.size(), ncclFloat64, comm_,
                                         stream_);
                  },
                  /*input_offset=*/rank_ * in);
  }
  absl::Status DoBroadcast(std::string& bytes, int root, absl::Time deadline) override {
    uint64_t size = bytes.size();
    EMBER_RETURN_IF_ERROR(Staged(&size, 8, &size, 8, deadline, [&](void* buf) {
      return ncclBroadcast(buf, buf, 8, ncclChar, root, comm_, stream_);
    }));
    bytes.resize(size);
    if (size == 0) return absl::OkStatus();
    return Staged(bytes.data(), size, bytes.data(), size, deadline, [&](void* buf) {
      return ncclBroadcast(buf, buf, size, ncclChar, root, comm_, stream_);
    });
  }
  absl::Status DoBarrier(absl::Time deadline) override {
    float one = 1;
    return DoAllReduce(absl::MakeSpan(&one, 1), ReduceOp::kSum, deadline);
  }

  // Device buffers: enqueued on this communicator's stream after an event recorded on the
  // producer's stream; no copy, no host synchronisation until Wait(), which polls an event
  // recorded after the collective. Host buffers: the base class (staged, blocking).
  absl::StatusOr<std::unique_ptr<Pending>> DoStartAllReduce(const Buffer& b, ReduceOp op,
                                                            absl::Time deadline) override {
    if (b.on_host()) return Communicator::DoStartAllReduce(b, op, deadline);
    if (comm_ == nullptr) return absl::FailedPreconditionError("NCCL communicator was aborted");
    if (b.device != device_) {
      return absl::InvalidArgumentError(absl::StrCat("AllReduce of ", b.DebugString(), ": this rank's NCCL communicator is on cuda:",
                                                     device_, "; move the buffer there"));
    }
    cudaEvent_t ready = nullptr, done = nullptr;
    cudaError_t e = cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (e != cudaSuccess) return CudaError("cudaEventCreate", e);
    auto pending = std::make_unique<DevicePending>(this, done, deadline, b.DebugString());
    cudaStream_t producer = static_cast<cudaStream_t>(b.stream);
    if ((e = cudaEventRecord(ready, producer)) != cudaSuccess) return CudaError("cudaEventRecord", e);
    e = cudaStreamWaitEvent(stream_, ready, 0);
    cudaEventDestroy(ready);  // released once the wait is enqueued
    if (e != cudaSuccess) return CudaError("cudaStreamWaitEvent", e);
    ncclResult_t r = ncclAllReduce(b.data, b.data, b.count, ToNccl(b.dtype), ToNccl(op), comm_, stream_);
    if (r != ncclSuccess && r != ncclInProgress) return NcclError("ncclAllReduce", r);
    EMBER_RETURN_IF_ERROR(WaitComm("ncclAllReduce enqueue", deadline));
    if ((e = cudaEventRecord(done, stream_)) != cudaSuccess) return CudaError("cudaEventRecord", e);
    return std::unique_ptr<Pending>(std::move(pending));
  }

 private:
  NcclCommunicator() = default;

  // A device all-reduce in flight: Wait() polls its event and NCCL's error state; at the deadline
  // the communicator is aborted (which frees the GPU from the stuck kernel).
  class DevicePending final : public Pending {
   public:
    DevicePending(NcclCommunicator* c, cudaEvent_t done, absl::Time deadline, std::string what)
        : c_(c), done_(done), deadline_(deadline), what_(std::move(what)) {}
    ~DevicePending() override {
      if (done_ != nullptr) cudaEventDestroy(done_);
    }
    absl::Status Wait() override {
      if (!waited_) {
        status_ = c_->PollEvent(done_, absl::StrCat("ncclAllReduce of ", what_).c_str(), deadline_);
        waited_ = true;
      }
      return status_;
    }

   private:
    NcclCommunicator* c_;
    cudaEvent_t done_;
    absl::Time deadline_;
    std::string what_;
    bool waited_ = false;
    absl::Status status_;
  };

  static ncclDataType_t ToNccl(DType t) {
    switch (t) {
      case DType::kFloat32:
        return ncclFloat32;
      case DType::kFloat64:
        return ncclFloat64;
      case DType::kFloat16:
        return ncclFloat16;
      case DType::kBFloat16:
        return ncclBfloat16;
      case DType::kInt64:
        return ncclInt64;
    }
    return ncclFloat32;
  }
  static ncclRedOp_t ToNccl(ReduceOp op) { return ::ember::dist::ToNccl(op); }

  // Polls `event` until it completes; NCCL's asynchronous errors and the deadline end the wait
  // (the deadline aborts the communicator).
  absl::Status PollEvent(cudaEvent_t event, const char* what, absl::Time deadline) {
    for (int64_t polls = 0;; ++polls) {
      cudaError_t e = cudaEventQuery(event);
      if (e == cudaSuccess) return absl::OkStatus();
      if (e != cudaErrorNotReady) return CudaError(what, e);
      if (comm_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(what, ": NCCL communicator was aborted"));
      ncclResult_t state;
      if (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state != ncclSuccess && state != ncclInProgress) {
        return NcclError(what, state);
      }
      if (absl::Now() > deadline) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        return absl::DeadlineExceededError(
            absl::StrCat(what, ": not every rank joined before the deadline; NCCL communicator aborted"));
      }
      if (polls > 1000) std::this_thread::yield();
    }
  }

  // Waits until the communicator has no operation in progress, or aborts it at the deadline.
  absl::Status WaitComm(const char* what, absl::Time deadline) {
    while (true) {
      ncclResult_t state;
      ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) return NcclError(what, r);
      if (state == ncclSuccess) return absl::OkStatus();
      if (state != ncclInProgress) return NcclError(what, state);
      if (absl::Now() > deadline) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        return absl::DeadlineExceededError(
            absl::StrCat(what, ": not every rank joined before the deadline; NCCL communicator aborted"));
      }
      std::this_thread::yield();
    }
  }

  // Copies `in` into pinned host memory and on to the device (at input_offset), runs `op` on the
  // device buffer, copies the result back to pinned memory and then to `out`. Every copy is
  // asynchronous (pinned memory), so the host polls an event against the deadline while the
  // collective runs: a dead peer ends in ncclCommAbort, never in a blocked cudaMemcpy.
  template <typename Op>
  absl::Status Staged(const void* in, size_t in_bytes, void* out, size_t out_bytes,
                      absl::Time deadline, Op op, size_t input_offset = 0) {
    if (comm_ == nullptr) return absl::FailedPreconditionError("NCCL communicator was aborted");
    const size_t need = std::max(in_bytes + input_offset, out_bytes);
    if (need > capacity_) {
      if (device_buffer_ != nullptr) cudaFree(device_buffer_);
      if (pinned_ != nullptr) cudaFreeHost(pinned_);
      device_buffer_ = pinned_ = nullptr;
      capacity_ = 0;
      cudaError_t e = cudaMalloc(&device_buffer_, need);
      if (e != cudaSuccess) return CudaError("cudaMalloc", e);
      e = cudaMallocHost(&pinned_, need);
      if (e != cudaSuccess) return CudaError("cudaMallocHost", e);
      capacity_ = need;
    }
    char* buf = static_cast<char*>(device_buffer_);
    char* host = static_cast<char*>(pinned_);
    std::memcpy(host + input_offset, in, in_bytes);
    cudaError_t e = cudaMemcpyAsync(buf + input_offset, host + input_offset, in_bytes, cudaMemcpyHostToDevice, stream_);
    if (e != cudaSuccess) return CudaError("cudaMemcpyAsync", e);
    ncclResult_t r = op(buf);
    if (r != ncclSuccess && r != ncclInProgress) return NcclError("NCCL collective", r);
    EMBER_RETURN_IF_ERROR(WaitComm("NCCL collective enqueue", deadline));
    e = cudaMemcpyAsync(host, buf, out_bytes, cudaMemcpyDeviceToHost, stream_);
    if (e != cudaSuccess) return CudaError("cudaMemcpyAsync", e);
    if ((e = cudaEventRecord(staged_done_, stream_)) != cudaSuccess) return CudaError("cudaEventRecord", e);
    CountStaged(static_cast<int64_t>(in_bytes + out_bytes));
    EMBER_RETURN_IF_ERROR(PollEvent(staged_done_, "NCCL collective", deadline));
    std::memcpy(out, host, out_bytes);
    return absl::OkStatus();
  }

  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  void* device_buffer_ = nullptr;
  void* pinned_ = nullptr;  // page-locked staging, capacity_ bytes
  cudaEvent_t staged_done_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace

bool NcclBuilt() { return true; }

int CudaDeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const NcclOptions& options) {
  return NcclCommunicator::Create(options);
}

}  // namespace ember::dist
