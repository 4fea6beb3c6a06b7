// Fuzz target: the checkpoint readers (zip archive + pickle) on arbitrary bytes: ReadTorchSave,
// VerifyTorchSave and ReadVerifiedTorchSave (the resume path's in-place reader, whose tensors are
// views of the buffer: it skips the per-record CRCs, never the bounds). Each must return a value
// or an error, never crash, hang, read out of bounds or run code.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "handlers/serialization/torch_save.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<ember::Value> v = ember::ReadTorchSave(bytes, "fuzz.pt");
  if (v.ok()) (void)v->DebugString();
  (void)ember::VerifyTorchSave(bytes, "fuzz.pt");
  // Unverified bytes on purpose: the in-place reader must stay in bounds even when the caller
  // broke its contract, since a bug there would read another rank's memory image.
  absl::StatusOr<ember::Value> in_place =
      ember::ReadVerifiedTorchSave(std::make_shared<std::string>(bytes), "fuzz.pt");
  if (in_place.ok()) (void)in_place->DebugString();
  return 0;
}
