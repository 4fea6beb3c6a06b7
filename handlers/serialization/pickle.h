// File: handlers/serialization/pickle.h
//
// The pickle half of torch.save (internal to this package; torch_save.h is the API).
//
// Pickle() writes a Value as a protocol-2 pickle that torch.load accepts, also under PyTorch
// 2.6+'s weights_only=True: builtin containers and scalars, collections.OrderedDict,
// torch._utils._rebuild_tensor_v2 and torch.*Storage persistent ids. Each distinct storage
// becomes one PickledStorage (key "0", "1", ... in order of first use); tensors sharing a storage
// reference it once and keep their offset and strides. Non-CPU tensors are copied to the CPU.
//
// Unpickle() reads such a pickle (Python's own included) and never executes code: an unknown
// opcode or global is an error (kInvalidArgument), a malformed or truncated pickle is kDataLoss,
// both naming `name` and the byte offset. Storages are fetched through `loader`.
//
// Thread safety: reentrant.
#ifndef EMBER_HANDLERS_SERIALIZATION_PICKLE_H_
#define EMBER_HANDLERS_SERIALIZATION_PICKLE_H_

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "handlers/serialization/value.h"

namespace ember::serialization {

struct PickledStorage {
  std::string key;
  torch::Tensor holder;  // keeps the storage alive; CPU
  const void* data;
  size_t nbytes;
};

struct Pickled {
  std::string bytes;  // data.pkl
  std::vector<PickledStorage> storages;
};

absl::StatusOr<Pickled> Pickle(const Value& value);

// Returns the storage `key` as a 1-D tensor of `numel` elements of `dtype`, or an error.
using StorageLoader = std::function<absl::StatusOr<torch::Tensor>(
    const std::string& key, torch::ScalarType dtype, int64_t numel)>;

absl::StatusOr<Value> Unpickle(std::string_view data, std::string name, StorageLoader loader);

}  // namespace ember::serialization

#endif  // EMBER_HANDLERS_SERIALIZATION_PICKLE_H_
