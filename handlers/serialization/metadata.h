// File: handlers/serialization/metadata.h
//
// CheckpointMetadata: what Checkpoint records about each of its files, stored inside the file (in
// an extra record of the torch.save archive, see DiskSaver) so that a restarted run knows each
// file's basename, priority and save order without unpickling it.
//
// Serialize() writes one "key=value" per line, the priority as %.17g (nan/inf spelled out) so it
// round-trips exactly; Parse() is its inverse and rejects a missing or unknown version line and
// a malformed value (kDataLoss naming the key and the value; a save_index outside
// [0, INT64_MAX - 1] is malformed), never aborting on bad input.
//
// Example:
//   CheckpointMetadata m{.basename = "best_model", .priority = 0.93, .save_index = 4};
//   absl::StatusOr<CheckpointMetadata> back = CheckpointMetadata::Parse(m.Serialize());
#ifndef EMBER_HANDLERS_SERIALIZATION_METADATA_H_
#define EMBER_HANDLERS_SERIALIZATION_METADATA_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace ember {

struct CheckpointMetadata {
  std::string basename;    // "{prefix}_{name}" or "{name}" (ignite's metadata["basename"])
  std::string score_name;
  double priority = 0;     // the score, or the global step
  int64_t save_index = 0;  // 0, 1, 2, ... in save order
  std::optional<int64_t> global_step;

  std::string Serialize() const;
  static absl::StatusOr<CheckpointMetadata> Parse(const std::string& text);
};

}  // namespace ember

#endif  // EMBER_HANDLERS_SERIALIZATION_METADATA_H_
