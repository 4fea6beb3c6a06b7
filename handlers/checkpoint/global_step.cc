#include "handlers/checkpoint/global_step.h"

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"

namespace ember {

std::function<int64_t(const Engine&, Event)> GlobalStepFromEngine(const Engine& other) {
  return [&other](const Engine&, Event event) -> int64_t {
    absl::StatusOr<int64_t> v = other.EventAttributeValue(event);
    return v.ok() ? *v : other.state().epoch;
  };
}

}  // namespace ember
