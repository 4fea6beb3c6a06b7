#include "handlers/serialization/metadata.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace ember {

// One "key=value" per line; the priority as %.17g (or nan/inf) so it round-trips exactly.
std::string CheckpointMetadata::Serialize() const {
  std::string out = "ember_checkpoint_meta=1\n";
  absl::StrAppend(&out, "basename=", basename, "\n");
  absl::StrAppend(&out, "score_name=", score_name, "\n");
  absl::StrAppendFormat(&out, "priority=%.17g\n", priority);
  absl::StrAppend(&out, "save_index=", save_index, "\n");
  if (global_step) absl::StrAppend(&out, "global_step=", *global_step, "\n");
  return out;
}

absl::StatusOr<CheckpointMetadata> CheckpointMetadata::Parse(const std::string& text) {
  CheckpointMetadata m;
  bool versioned = false;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    const std::string& k = kv.first;
    const std::string& v = kv.second;
    bool ok = true;
    if (k == "ember_checkpoint_meta") {
      versioned = v == "1";
    } else if (k == "basename") {
      m.basename = v;
    } else if (k == "score_name") {
      m.score_name = v;
    } else if (k == "priority") {
      if (v == "nan" || v == "-nan") {
        m.priority = std::nan("");
      } else {
        ok = absl::SimpleAtod(v, &m.priority);
      }
    } else if (k == "save_index") {
      // Checkpoint numbers the next save save_index + 1: the largest index leaves room for it.
      ok = absl::SimpleAtoi(v, &m.save_index) && m.save_index >= 0 &&
           m.save_index < std::numeric_limits<int64_t>::max();
    } else if (k == "global_step") {
      int64_t gs;
      ok = absl::SimpleAtoi(v, &gs);
      m.global_step = gs;
    }
    if (!ok) return absl::DataLossError(absl::StrCat("checkpoint metadata: bad value for ", k, ": '", v, "'"));
  }
  if (!versioned) return absl::DataLossError("checkpoint metadata: missing or unknown version");
  return m;
}

}  // namespace ember
