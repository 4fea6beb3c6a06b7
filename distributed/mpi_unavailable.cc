// The MPI backend of a build without MPI (tools/gpu/CMakeLists.txt: a GPU machine with no MPI
// installed): the API stays, and says why it cannot work. Create never succeeds, so the methods
// below are never reached; they exist because the class is final and its vtable is emitted here.
#include "absl/status/status.h"
#include "distributed/mpi_communicator.h"

namespace ember::dist {
namespace {

absl::Status NoMpi() {
  return absl::UnimplementedError(
      "this build of Ember has no MPI backend (built by tools/gpu/build.sh, without MPI); "
      "use --backend=nccl under torchrun, or the Bazel build for MPI");
}

}  // namespace

struct MpiCommunicator::Channels {};
MpiCommunicator::MpiCommunicator() = default;
absl::Status MpiCommunicator::Wait(void*, const char*, absl::Time, bool) { return NoMpi(); }
void MpiCommunicator::DoNotifyFailure(const absl::Status&) {}
absl::StatusOr<std::vector<int>> MpiCommunicator::DoMeet(bool, absl::Time) { return NoMpi(); }
absl::Status MpiCommunicator::ReceivedNotice() { return absl::OkStatus(); }
absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(absl::Duration) { return NoMpi(); }
MpiCommunicator::~MpiCommunicator() = default;
absl::Status MpiCommunicator::DoAllReduce(absl::Span<double>, ReduceOp, absl::Time) { return NoMpi(); }
absl::Status MpiCommunicator::DoAllReduce(absl::Span<float>, ReduceOp, absl::Time) { return NoMpi(); }
absl::Status MpiCommunicator::DoAllGather(absl::Span<const double>, absl::Span<double>, absl::Time) { return NoMpi(); }
absl::Status MpiCommunicator::DoBroadcast(std::string&, int, absl::Time) { return NoMpi(); }
absl::Status MpiCommunicator::DoBarrier(absl::Time) { return NoMpi(); }
absl::StatusOr<std::unique_ptr<Pending>> MpiCommunicator::DoStartAllReduce(const Buffer&, ReduceOp, absl::Time) {
  return NoMpi();
}

}  // namespace ember::dist
