#include "base/atomic_file.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ember {

std::string TempPathFor(const std::string& path) {
  return JoinPath(DirName(path), absl::StrCat(".", BaseName(path), kTempSuffix));
}

bool IsTempName(const std::string& name) {
  return !name.empty() && name[0] == '.' && absl::EndsWith(name, kTempSuffix);
}

namespace {

absl::Status Annotate(const absl::Status& s, const std::string& path, const char* step) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("saving ", path, " failed at step '", step, "': ", s.message()));
}

}  // namespace

absl::Status WriteFileAtomically(FileSystem* fs, const std::string& path,
                                 const std::function<absl::Status(const AppendFn&)>& write) {
  const std::string tmp = TempPathFor(path);
  auto fail = [&](const absl::Status& s, const char* step) {
    (void)fs->RemoveFile(tmp);  // best effort; a crash leaves it for the next run to clean up
    return Annotate(s, path, step);
  };
  // 1. create
  absl::StatusOr<std::unique_ptr<WritableFile>> file = fs->NewWritableFile(tmp);
  if (!file.ok()) return Annotate(file.status(), path, "create temporary file");
  // 2. write
  absl::Status s = write([&](const void* data, size_t size) { return (*file)->Append(data, size); });
  if (!s.ok()) return fail(s, "write");
  // 3. fsync the file
  if (s = (*file)->Sync(); !s.ok()) return fail(s, "fsync file");
  // 4. close
  if (s = (*file)->Close(); !s.ok()) return fail(s, "close");
  // 5. permissions
  if (s = fs->Chmod(tmp, 0644); !s.ok()) return fail(s, "chmod");
  // 6. publish
  if (s = fs->Rename(tmp, path); !s.ok()) return fail(s, "rename into place");
  // 7. make the rename durable
  if (s = fs->SyncDir(DirName(path)); !s.ok()) return Annotate(s, path, "fsync directory");
  return absl::OkStatus();
}

absl::Status WriteFileDirectly(FileSystem* fs, const std::string& path,
                               const std::function<absl::Status(const AppendFn&)>& write) {
  absl::StatusOr<std::unique_ptr<WritableFile>> file = fs->NewWritableFile(path);
  if (!file.ok()) return Annotate(file.status(), path, "create");
  absl::Status s = write([&](const void* data, size_t size) { return (*file)->Append(data, size); });
  if (!s.ok()) return Annotate(s, path, "write");
  if (s = (*file)->Sync(); !s.ok()) return Annotate(s, path, "fsync file");
  if (s = (*file)->Close(); !s.ok()) return Annotate(s, path, "close");
  return absl::OkStatus();
}

}  // namespace ember
