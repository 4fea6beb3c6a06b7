// NCCL (CUDA_HOME, else /usr/local/cuda) links; on a machine with a GPU it all-reduces on one
// device. Without NCCL in the build, or without a GPU, the test is skipped with the reason.
#include "gtest/gtest.h"

#ifdef EMBER_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

TEST(Nccl, AllReduceOnOneDevice) {
#ifndef EMBER_HAVE_NCCL
  GTEST_SKIP() << "built without NCCL (no nccl.h/libnccl.so under CUDA_HOME or /usr/local/cuda)";
#else
  int version = 0;
  ASSERT_EQ(ncclGetVersion(&version), ncclSuccess);
  EXPECT_GE(version, 20000);
  int devices = 0;
  cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    GTEST_SKIP() << "no CUDA device (" << cudaGetErrorString(err) << "); NCCL " << version
                 << " linked but not run";
  }
  ncclComm_t comm;
  int dev = 0;
  ASSERT_EQ(ncclCommInitAll(&comm, 1, &dev), ncclSuccess);
  float* buf = nullptr;
  ASSERT_EQ(cudaMalloc(&buf, 4 * sizeof(float)), cudaSuccess);
  float host[4] = {1, 2, 3, 4};
  ASSERT_EQ(cudaMemcpy(buf, host, sizeof(host), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(ncclAllReduce(buf, buf, 4, ncclFloat, ncclSum, comm, nullptr), ncclSuccess);
  ASSERT_EQ(cudaMemcpy(host, buf, sizeof(host), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(host[3], 4.0f);
  cudaFree(buf);
  ncclCommDestroy(comm);
#endif
}
