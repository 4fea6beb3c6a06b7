// Fuzz target: the checkpoint reader (zip archive + pickle) on arbitrary bytes. It must return a
// value or an error, never crash, hang or run code.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "handlers/serialization/torch_save.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<ember::Value> v =
      ember::ReadTorchSave(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.pt");
  if (v.ok()) (void)v->DebugString();
  return 0;
}
