// File: distributed/buffer.h
//
// Buffer: a typed region of memory a collective works on in place, on the host or on a CUDA
// device, described without LibTorch (distributed/ stays LibTorch-free; the tensor adapter is
// handlers/parallel/data_parallel). A device buffer names the producer's CUDA stream: the NCCL backend
// enqueues its collective on its own stream after an event recorded on that one, so the host
// never waits for the producer per buffer.
//
// Example:
//   std::vector<float> grads = ...;
//   dist::Buffer b = dist::Buffer::Host(grads.data(), grads.size());
#ifndef EMBER_DISTRIBUTED_BUFFER_H_
#define EMBER_DISTRIBUTED_BUFFER_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace ember::dist {

enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16, kInt64 };

// Bytes per element.
size_t DTypeSize(DType t);
// "float32", "float64", "float16", "bfloat16", "int64".
const char* DTypeName(DType t);

struct Buffer {
  static constexpr int kHost = -1;

  void* data = nullptr;
  DType dtype = DType::kFloat32;
  size_t count = 0;      // elements
  int device = kHost;    // kHost, or the CUDA device index
  void* stream = nullptr;  // device buffers: the producer's cudaStream_t (nullptr: the legacy default stream)

  static Buffer Host(float* p, size_t n) { return {p, DType::kFloat32, n}; }
  static Buffer Host(double* p, size_t n) { return {p, DType::kFloat64, n}; }
  static Buffer Host(int64_t* p, size_t n) { return {p, DType::kInt64, n}; }

  bool on_host() const { return device == kHost; }
  size_t bytes() const { return count * DTypeSize(dtype); }
  // "float32[1024] on the host", "bfloat16[8] on cuda:1".
  std::string DebugString() const;
};

// Widening and narrowing of the 16-bit floating-point formats (round to nearest even), for
// backends that reduce them on the host.
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToBFloat16(float f);

}  // namespace ember::dist

#endif  // EMBER_DISTRIBUTED_BUFFER_H_
