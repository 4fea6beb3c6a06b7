// The NCCL backend of a build without NCCL: the API stays, and says why it cannot work.
#include "absl/status/status.h"
#include "distributed/nccl_communicator.h"

namespace ember::dist {

bool NcclBuilt() { return false; }

int CudaDeviceCount() { return 0; }

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const NcclOptions&) {
  return absl::UnimplementedError(
      "this build of Ember has no NCCL backend (no nccl.h and libnccl.so under CUDA_HOME or "
      "/usr/local/cuda when it was built); rebuild with CUDA_HOME set, or use --backend=mpi");
}

}  // namespace ember::dist
