#include "handlers/checkpoint/score.h"

#include <cmath>
#include <string>

#include "absl/strings/str_format.h"

namespace ember {

std::string FormatScore(const Score& score) {
  switch (score.kind) {
    case Score::Kind::kBool:
      return score.value != 0 ? "True" : "False";
    case Score::Kind::kInt:
      if (std::isfinite(score.value) && score.value == std::floor(score.value)) {
        return absl::StrFormat("%.0f", score.value);
      }
      break;
    case Score::Kind::kFloat:
      break;
  }
  if (std::isnan(score.value)) return "nan";
  if (std::isinf(score.value)) return score.value > 0 ? "inf" : "-inf";
  return absl::StrFormat("%.4f", score.value);
}

}  // namespace ember
