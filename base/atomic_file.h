// File: base/atomic_file.h
//
// WriteFileAtomically: publishes a file so that a crash at any moment leaves either the old
// content under `path` (or no file, if there was none) or the complete new content, never a torn
// file. The protocol, each step through the FileSystem seam:
//   1. create a temporary file in the same directory: ".<name>.ember-tmp" (one per final name;
//      a stale one from a crashed run is replaced);
//   2. write the content (`write` streams it through the sink it is given);
//   3. fsync the temporary file;
//   4. close it;
//   5. chmod 0644 (ignite's atomic DiskSaver makes checkpoints group/other-readable too);
//   6. rename it over `path` (atomic on POSIX);
//   7. fsync the directory, so that the rename itself is durable.
// On failure at any step the temporary file is removed (best effort) and the error names the
// file and the step. Thread-safe if the FileSystem is; concurrent writers of the same `path`
// are not supported.
#ifndef EMBER_BASE_ATOMIC_FILE_H_
#define EMBER_BASE_ATOMIC_FILE_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "base/file_system.h"

namespace ember {

inline constexpr char kTempSuffix[] = ".ember-tmp";
// Number of FileSystem operations WriteFileAtomically performs for a write with one Append
// (for fault-injection tests that fail each in turn).
inline constexpr int kAtomicWriteOps = 7;

// Receives the bytes of the file.
using AppendFn = std::function<absl::Status(const void* data, size_t size)>;

absl::Status WriteFileAtomically(FileSystem* fs, const std::string& path,
                                 const std::function<absl::Status(const AppendFn&)>& write);

// Writes `path` directly (ignite's atomic=False): a failure can leave a torn file under `path`.
absl::Status WriteFileDirectly(FileSystem* fs, const std::string& path,
                               const std::function<absl::Status(const AppendFn&)>& write);

// The temporary name used for `path`, and whether a file name is such a temporary file.
std::string TempPathFor(const std::string& path);
bool IsTempName(const std::string& name);

}  // namespace ember

#endif  // EMBER_BASE_ATOMIC_FILE_H_
