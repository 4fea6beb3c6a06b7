// The communicator conformance suite on the NCCL backend (one rank per process; run it under
// mpirun on a multi-GPU machine for more). Skipped, with the reason, where this build has no
// NCCL or the machine no CUDA device.
#include "absl/time/clock.h"
#include "distributed/nccl_communicator.h"
#include "gtest/gtest.h"
#include "tests/distributed/communicator_checks.h"

namespace ember::dist {
namespace {

TEST(Nccl, ConformanceOnOneGpu) {
  if (!NcclBuilt()) GTEST_SKIP() << "this build has no NCCL backend (no NCCL under CUDA_HOME at build time)";
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device on this machine; the NCCL backend was built but not run";
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      CreateNcclCommunicator({.rank = 0, .world_size = 1, .local_rank = 0, .init_timeout = absl::Seconds(60)});
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ((*comm)->backend(), "nccl");
  testing::CheckAll(**comm);
}

}  // namespace
}  // namespace ember::dist
