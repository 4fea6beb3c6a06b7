#include "handlers/checkpoint/disk_saver.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/atomic_file.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "distributed/root_action.h"
#include "handlers/serialization/torch_save.h"

namespace ember {
namespace {

constexpr char kMetaRecord[] = "ember_meta";

}  // namespace

absl::StatusOr<std::unique_ptr<DiskSaver>> DiskSaver::Create(DiskSaverOptions options,
                                                             dist::Communicator* comm) {
  if (options.dirname.empty()) return absl::InvalidArgumentError("DiskSaver: dirname is empty");
  if (options.save_on_rank < 0 || (comm && options.save_on_rank >= comm->world_size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DiskSaver: save_on_rank ", options.save_on_rank, " is not a rank of this job (world size ",
        comm ? comm->world_size() : 1, ")"));
  }
  if (options.fs == nullptr) options.fs = FileSystem::Default();
  FileSystem* fs = options.fs;
  EMBER_ASSIGN_OR_RETURN(const std::string dir, fs->AbsolutePath(options.dirname));
  auto check = [&]() -> absl::Status {
    if (!fs->Exists(dir)) {
      if (!options.create_dir) {
        return absl::NotFoundError(absl::StrCat("Directory path '", dir, "' is not found"));
      }
      EMBER_RETURN_IF_ERROR(fs->CreateDirs(dir));
    }
    if (!fs->IsDirectory(dir)) {
      return absl::FailedPreconditionError(absl::StrCat("'", dir, "' is not a directory"));
    }
    if (!fs->IsWritableDirectory(dir)) {
      return absl::PermissionDeniedError(absl::StrCat("checkpoint directory '", dir, "' is not writable"));
    }
    EMBER_ASSIGN_OR_RETURN(std::vector<std::string> names, fs->ListDir(dir));
    std::vector<std::string> existing;
    for (const std::string& name : names) {
      if (IsTempName(name)) {
        // A temporary file of a save that crashed: ours by its name, never a checkpoint.
        (void)fs->RemoveFile(JoinPath(dir, name));
        continue;
      }
      if (absl::EndsWith(name, ".pt")) existing.push_back(name);
    }
    if (options.require_empty && !existing.empty()) {
      std::sort(existing.begin(), existing.end());
      return absl::AlreadyExistsError(absl::StrCat(
          "Files ['", absl::StrJoin(existing, "', '"), "'] with extension '.pt' are already present in the "
          "directory ", dir, ". If you want to use this directory anyway, pass `require_empty=false`."));
    }
    return absl::OkStatus();
  };
  absl::Status verdict;
  if (comm != nullptr) {
    verdict = dist::RunOnRoot(*comm, options.save_on_rank, absl::Now() + absl::Seconds(300), check);
  } else {
    verdict = check();
  }
  if (!verdict.ok()) return verdict;
  return std::unique_ptr<DiskSaver>(new DiskSaver(std::move(options), dir));
}

std::string DiskSaver::Location(const std::string& filename) const {
  return JoinPath(dirname_, filename);
}

absl::Status DiskSaver::Save(const Value& checkpoint, const std::string& filename,
                             const CheckpointMetadata& metadata) {
  const std::string path = Location(filename);
  auto write = [&](const AppendFn& append) {
    return WriteTorchSave(checkpoint, append, {{kMetaRecord, metadata.Serialize()}});
  };
  Forget(filename);
  absl::Status s = options_.atomic ? WriteFileAtomically(options_.fs, path, write)
                                   : WriteFileDirectly(options_.fs, path, write);
  if (s.ok()) {
    // Its bytes are those just checksummed while written: verified by construction.
    MutexLock lock(&mu_);
    verified_.insert(filename);
  }
  return s;
}

void DiskSaver::Forget(const std::string& filename) {
  MutexLock lock(&mu_);
  verified_.erase(filename);
}

absl::Status DiskSaver::Remove(const std::string& filename) {
  Forget(filename);
  const std::string path = Location(filename);
  EMBER_RETURN_IF_ERROR(options_.fs->RemoveFile(path));
  return options_.fs->SyncDir(dirname_);
}

absl::StatusOr<std::vector<std::pair<std::string, CheckpointMetadata>>> DiskSaver::List() {
  EMBER_ASSIGN_OR_RETURN(std::vector<std::string> names, options_.fs->ListDir(dirname_));
  std::sort(names.begin(), names.end());
  std::vector<std::pair<std::string, CheckpointMetadata>> out;
  for (const std::string& name : names) {
    if (!absl::EndsWith(name, ".pt") || options_.fs->IsDirectory(Location(name))) continue;
    // Only each file's trailer is read (its zip directory, metadata and checksum record, checked
    // against each other): listing costs the same however many and however large the checkpoints
    // are. A listed file is not yet trusted: Verify() reads it whole before it is resumed from or
    // ranked as best (Checkpoint does so), and a corrupt one is moved aside then.
    absl::StatusOr<RecordLookup> found = ReadRecordFromTrailer(Location(name), kMetaRecord, options_.fs);
    if (!found.ok()) {
      // Not readable as an archive: whose it is cannot be told, so it is left where it is.
      LogWarning(absl::StrCat("DiskSaver: ignoring ", Location(name), ": ", found.status().message()));
      Reject(name, found.status());
      continue;
    }
    if (!found->record) {
      // Not ours (e.g. saved by Python's torch.save): never adopted, never deleted, but said, so
      // that a resume that finds nothing else can tell the user why it was not used.
      Reject(name, absl::FailedPreconditionError(
                       "not written by Ember (no ember_meta record), so its place among the checkpoints is "
                       "unknown; load it explicitly"));
      continue;
    }
    absl::StatusOr<CheckpointMetadata> parsed = CheckpointMetadata::Parse(*found->record);
    absl::Status integrity = found->integrity.ok() ? parsed.status() : found->integrity;
    if (!integrity.ok()) {
      Quarantine(name, integrity);
      continue;
    }
    out.emplace_back(name, *parsed);
  }
  return out;
}

absl::Status DiskSaver::Verify(const std::string& filename) {
  {
    MutexLock lock(&mu_);
    if (verified_.count(filename) > 0) return absl::OkStatus();
  }
  absl::StatusOr<ArchiveCheck> check = VerifyTorchSaveFile(Location(filename), options_.fs);
  absl::Status s = check.status();
  if (s.ok() && !check->has_checksum) {
    s = absl::DataLossError(absl::StrCat(Location(filename), ": has no checksum record"));
  }
  if (!s.ok()) {
    if (s.code() == absl::StatusCode::kDataLoss) Quarantine(filename, s);
    return s;
  }
  MutexLock lock(&mu_);
  verified_.insert(filename);
  return absl::OkStatus();
}

void DiskSaver::Reject(const std::string& filename, const absl::Status& why) {
  MutexLock lock(&mu_);
  rejected_.push_back(absl::StrCat(filename, ": ", why.message()));
}

void DiskSaver::Quarantine(const std::string& filename, const absl::Status& why) {
  // Moved aside under a name that says so (and no longer ends in .pt): kept for inspection,
  // never adopted again, and a later save of the same name cannot overwrite it.
  Forget(filename);
  std::string aside = absl::StrCat(filename, ".corrupt");
  for (int i = 1; options_.fs->Exists(Location(aside)); ++i) aside = absl::StrCat(filename, ".corrupt.", i);
  absl::Status moved = options_.fs->Rename(Location(filename), Location(aside));
  if (moved.ok()) moved = options_.fs->SyncDir(dirname_);
  const std::string outcome = moved.ok() ? absl::StrCat("moved aside to ", aside)
                                         : absl::StrCat("could not move it aside: ", moved.message());
  LogWarning(absl::StrCat("DiskSaver: ", Location(filename), " is corrupt (", why.message(), "); ", outcome));
  Reject(filename, absl::DataLossError(absl::StrCat(why.message(), " (", outcome, ")")));
}

absl::StatusOr<std::string> DiskSaver::SetAside(const std::string& filename) {
  Forget(filename);
  std::string aside = absl::StrCat(filename, ".abandoned");
  for (int i = 1; options_.fs->Exists(Location(aside)); ++i) aside = absl::StrCat(filename, ".abandoned.", i);
  EMBER_RETURN_IF_ERROR(options_.fs->Rename(Location(filename), Location(aside)));
  EMBER_RETURN_IF_ERROR(options_.fs->SyncDir(dirname_));
  return Location(aside);
}

std::vector<std::string> DiskSaver::Rejected() const {
  MutexLock lock(&mu_);
  return rejected_;
}

absl::StatusOr<Value> DiskSaver::Load(const std::string& filename) {
  return ReadTorchSaveFile(Location(filename), options_.fs);
}

absl::StatusOr<std::string> DiskSaver::ReadBytes(const std::string& filename) {
  return options_.fs->ReadFile(Location(filename));
}

}  // namespace ember
