// The communicator conformance suite on the NCCL backend (one rank per process; run it under
// mpirun on a multi-GPU machine for more). Skipped, with the reason, where this build has no
// NCCL or the machine no CUDA device.
#ifdef EMBER_TEST_CUDA
#include <cuda_runtime_api.h>
#endif

#include <vector>

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

#define SKIP_WITHOUT_GPU()                                                                                  \
  if (!NcclBuilt()) GTEST_SKIP() << "this build has no NCCL backend (no NCCL under CUDA_HOME at build time)"; \
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device on this machine; the NCCL backend was built but not run"

// A device buffer is reduced where it lies: nothing is staged through the host (issue 15).
TEST(Nccl, DeviceBuffersStayOnTheDevice) {
  SKIP_WITHOUT_GPU();
#ifndef EMBER_TEST_CUDA
  GTEST_SKIP() << "this build has no CUDA runtime headers";
#else
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      CreateNcclCommunicator({.rank = 0, .world_size = 1, .local_rank = 0, .init_timeout = absl::Seconds(60)});
  ASSERT_TRUE(comm.ok()) << comm.status();
  ASSERT_TRUE((*comm)->device_buffers());
  std::vector<float> host(1 << 20);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i % 1000) * 0.5f;
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, host.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  const int64_t staged = (*comm)->host_staged_bytes();
  for (int i = 0; i < 10; ++i) {
    auto p = (*comm)->StartAllReduce(Buffer{dev, DType::kFloat32, host.size(), 0}, ReduceOp::kSum,
                                     absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_TRUE((*p)->Wait().ok());
  }
  EXPECT_EQ((*comm)->host_staged_bytes(), staged) << "a device buffer was copied through the host";
  std::vector<float> back(host.size());
  ASSERT_EQ(cudaMemcpy(back.data(), dev, back.size() * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, host) << "the sum over one rank is the buffer itself";
  auto wrong = (*comm)->StartAllReduce(Buffer{dev, DType::kFloat32, 1, 7}, ReduceOp::kSum, absl::Now() + absl::Seconds(5));
  EXPECT_FALSE(wrong.ok()) << "a buffer on another device than the communicator's";
  cudaFree(dev);
#endif
}

// A second rank that never joins: the first fails within the deadline instead of hanging.
TEST(Nccl, APeerThatNeverJoinsEndsAtTheDeadline) {
  SKIP_WITHOUT_GPU();
  const std::string file = std::string(::testing::TempDir()) + "/nccl_never_joins.id";
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateNcclCommunicator(
      {.rank = 0, .world_size = 2, .local_rank = 0, .rendezvous_file = file, .rendezvous_run_id = "never-joins",
       .init_timeout = absl::Seconds(5)});
  const absl::Duration took = absl::Now() - start;
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_LT(took, absl::Seconds(15)) << comm.status();
}

}  // namespace
}  // namespace ember::dist
