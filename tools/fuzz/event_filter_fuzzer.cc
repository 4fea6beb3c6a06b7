// Fuzz target: event-filter arguments (every, once, before, after) and their evaluation. A filter
// the validator accepts must evaluate without crashing for any counter value; one it rejects must
// say why.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/engine.h"
#include "engine/events.h"

namespace {
int64_t Take(const uint8_t*& p, size_t& n) {
  int64_t v = 0;
  const size_t k = n < 8 ? n : 8;
  std::memcpy(&v, p, k);
  p += k;
  n -= k;
  return v;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mask = data[0];
  const uint8_t* p = data + 1;
  size_t n = size - 1;
  ember::FilterArgs args;
  if (mask & 1) args.every = Take(p, n);
  if (mask & 2) args.before = Take(p, n);
  if (mask & 4) args.after = Take(p, n);
  if (mask & 8) {
    std::vector<int64_t> once;
    for (int i = 0; i < (mask >> 4) && n > 0; ++i) once.push_back(Take(p, n));
    args.once = once;
  }
  absl::StatusOr<ember::EventFilter> filter = ember::EventFilter::Create(args);
  if (!filter.ok()) {
    if (filter.status().message().empty()) __builtin_trap();
    return 0;
  }
  static ember::Engine engine([](ember::Engine&) {});
  for (int64_t value : {int64_t{0}, int64_t{1}, int64_t{7}, INT64_MAX, INT64_MIN, Take(p, n)}) {
    (void)filter->Matches(engine, value);
  }
  return 0;
}
