#include "base/testing/fault_injection_file_system.h"

#include <unistd.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"

namespace ember::testing {
namespace {

class FaultFile final : public WritableFile {
 public:
  FaultFile(FaultInjectionFileSystem* fs, std::unique_ptr<WritableFile> base)
      : fs_(fs), base_(std::move(base)) {}
  absl::Status Append(const void* data, size_t size) override {
    if (absl::Status s = fs_->Mutate("append " + path()); !s.ok()) return s;
    absl::Status s = base_->Append(data, size);
    if (s.ok()) fs_->Appended(path(), size);
    return s;
  }
  absl::Status Sync() override {
    if (absl::Status s = fs_->Mutate("fsync " + path()); !s.ok()) return s;
    absl::Status s = base_->Sync();
    if (s.ok()) fs_->Synced(path());
    return s;
  }
  absl::Status Close() override {
    if (absl::Status s = fs_->Mutate("close " + path()); !s.ok()) {
      (void)base_->Close();
      return s;
    }
    return base_->Close();
  }
  const std::string& path() const override { return base_->path(); }

 private:
  FaultInjectionFileSystem* fs_;
  std::unique_ptr<WritableFile> base_;
};

}  // namespace

void FaultInjectionFileSystem::FailOp(int n, absl::Status error) {
  MutexLock lock(&mu_);
  fail_at_ = ops_ + n;
  fail_from_ = false;
  error_ = std::move(error);
}

void FaultInjectionFileSystem::FailFrom(int n, absl::Status error) {
  MutexLock lock(&mu_);
  fail_at_ = ops_ + n;
  fail_from_ = true;
  error_ = std::move(error);
}

void FaultInjectionFileSystem::ClearFaults() {
  MutexLock lock(&mu_);
  fail_at_.reset();
  read_fault_path_.clear();
}

void FaultInjectionFileSystem::FailReads(std::string path_part, absl::Status error) {
  MutexLock lock(&mu_);
  read_fault_path_ = std::move(path_part);
  read_error_ = std::move(error);
}

void FaultInjectionFileSystem::SetHook(std::function<void(const std::string& op)> hook) {
  MutexLock lock(&mu_);
  hook_ = std::move(hook);
}

void FaultInjectionFileSystem::RunHook(const std::string& op) {
  std::function<void(const std::string&)> hook;
  {
    MutexLock lock(&mu_);
    hook = hook_;
  }
  if (hook) hook(op);  // outside the lock: it may block
}

absl::StatusOr<std::string> FaultInjectionFileSystem::ReadFile(const std::string& path) {
  RunHook("read " + path);
  {
    MutexLock lock(&mu_);
    if (!read_fault_path_.empty() && path.find(read_fault_path_) != std::string::npos) {
      log_.push_back("read " + path + " [FAILED]");
      return absl::Status(read_error_.code(), absl::StrCat("read ", path, ": ", read_error_.message()));
    }
  }
  return target()->ReadFile(path);
}

absl::StatusOr<std::string> FaultInjectionFileSystem::ReadFileTail(const std::string& path, size_t max_bytes,
                                                                   uint64_t* file_size) {
  RunHook("read " + path + " (tail)");
  {
    MutexLock lock(&mu_);
    if (!read_fault_path_.empty() && path.find(read_fault_path_) != std::string::npos) {
      log_.push_back("read " + path + " [FAILED] (tail)");
      return absl::Status(read_error_.code(), absl::StrCat("read ", path, ": ", read_error_.message()));
    }
  }
  return target()->ReadFileTail(path, max_bytes, file_size);
}

int FaultInjectionFileSystem::ops() const {
  MutexLock lock(&mu_);
  return ops_;
}

std::vector<std::string> FaultInjectionFileSystem::log() const {
  MutexLock lock(&mu_);
  return log_;
}

absl::Status FaultInjectionFileSystem::Mutate(const std::string& what) {
  RunHook(what);
  MutexLock lock(&mu_);
  const int n = ops_++;
  log_.push_back(what);
  if (fail_at_ && (n == *fail_at_ || (fail_from_ && n > *fail_at_))) {
    log_.back() += " [FAILED]";
    return absl::Status(error_.code(), absl::StrCat(what, ": ", error_.message()));
  }
  return absl::OkStatus();
}

void FaultInjectionFileSystem::Appended(const std::string& path, size_t size) {
  MutexLock lock(&mu_);
  files_[path].size += size;
}

void FaultInjectionFileSystem::Synced(const std::string& path) {
  MutexLock lock(&mu_);
  files_[path].synced = files_[path].size;
}

absl::StatusOr<std::unique_ptr<WritableFile>> FaultInjectionFileSystem::NewWritableFile(
    const std::string& path) {
  if (absl::Status s = Mutate("create " + path); !s.ok()) return s;
  const bool existed = target()->Exists(path);
  std::optional<std::string> old;
  if (existed) {
    absl::StatusOr<std::string> content = target()->ReadFile(path);
    if (content.ok()) old = *content;
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> file = target()->NewWritableFile(path);
  if (!file.ok()) return file.status();
  MutexLock lock(&mu_);
  files_[path] = FileState{};
  if (!existed) {
    journal_[DirName(path)].push_back({DirOp::kCreate, path, "", std::nullopt});
  }
  return std::unique_ptr<WritableFile>(new FaultFile(this, *std::move(file)));
}

absl::Status FaultInjectionFileSystem::Rename(const std::string& from, const std::string& to) {
  if (absl::Status s = Mutate(absl::StrCat("rename ", from, " -> ", to)); !s.ok()) return s;
  std::optional<std::string> replaced;
  if (target()->Exists(to)) {
    absl::StatusOr<std::string> content = target()->ReadFile(to);
    if (content.ok()) replaced = *content;
  }
  if (absl::Status s = target()->Rename(from, to); !s.ok()) return s;
  MutexLock lock(&mu_);
  auto it = files_.find(from);
  if (it != files_.end()) {
    files_[to] = it->second;
    files_.erase(from);
  } else {
    files_.erase(to);
  }
  journal_[DirName(to)].push_back({DirOp::kRename, from, to, replaced});
  return absl::OkStatus();
}

absl::Status FaultInjectionFileSystem::RemoveFile(const std::string& path) {
  if (absl::Status s = Mutate("remove " + path); !s.ok()) return s;
  std::optional<std::string> content;
  absl::StatusOr<std::string> c = target()->ReadFile(path);
  if (c.ok()) content = *c;
  if (absl::Status s = target()->RemoveFile(path); !s.ok()) return s;
  MutexLock lock(&mu_);
  files_.erase(path);
  journal_[DirName(path)].push_back({DirOp::kRemove, path, "", content});
  return absl::OkStatus();
}

absl::Status FaultInjectionFileSystem::SyncDir(const std::string& dir) {
  if (absl::Status s = Mutate("fsync " + dir + "/"); !s.ok()) return s;
  if (absl::Status s = target()->SyncDir(dir); !s.ok()) return s;
  MutexLock lock(&mu_);
  journal_.erase(dir);
  return absl::OkStatus();
}

absl::Status FaultInjectionFileSystem::CreateDir(const std::string& dir) {
  if (absl::Status s = Mutate("mkdir " + dir); !s.ok()) return s;
  if (absl::Status s = target()->CreateDir(dir); !s.ok()) return s;
  MutexLock lock(&mu_);
  journal_[DirName(dir)].push_back({DirOp::kMkdir, dir, "", std::nullopt});
  return absl::OkStatus();
}

absl::Status FaultInjectionFileSystem::RemoveDir(const std::string& dir) {
  if (absl::Status s = Mutate("rmdir " + dir); !s.ok()) return s;
  if (absl::Status s = target()->RemoveDir(dir); !s.ok()) return s;
  MutexLock lock(&mu_);
  journal_[DirName(dir)].push_back({DirOp::kRmdir, dir, "", std::nullopt});
  return absl::OkStatus();
}

absl::Status FaultInjectionFileSystem::Chmod(const std::string& path, unsigned mode) {
  if (absl::Status s = Mutate("chmod " + path); !s.ok()) return s;
  return target()->Chmod(path, mode);
}

absl::Status FaultInjectionFileSystem::SimulateCrash() {
  MutexLock lock(&mu_);
  // 1. File data after the last fsync is lost.
  for (const auto& [path, state] : files_) {
    if (!target()->Exists(path)) continue;
    if (::truncate(path.c_str(), static_cast<off_t>(state.synced)) != 0) {
      return ErrnoStatus(errno, "truncate", path);
    }
  }
  files_.clear();
  // 2. Directory entries changed after the directory's last fsync are undone, newest first.
  auto write = [&](const std::string& path, const std::string& content) -> absl::Status {
    absl::StatusOr<std::unique_ptr<WritableFile>> f = target()->NewWritableFile(path);
    if (!f.ok()) return f.status();
    if (absl::Status s = (*f)->Append(content.data(), content.size()); !s.ok()) return s;
    return (*f)->Close();
  };
  // Deepest directories first (reverse path order), so that undoing a directory's creation in
  // its parent comes after undoing what happened inside it.
  for (auto d = journal_.rbegin(); d != journal_.rend(); ++d) {
    auto& ops = d->second;
    for (auto it = ops.rbegin(); it != ops.rend(); ++it) {
      switch (it->kind) {
        case DirOp::kCreate:
          (void)target()->RemoveFile(it->a);
          break;
        case DirOp::kRename:
          if (target()->Exists(it->b)) (void)target()->Rename(it->b, it->a);
          if (it->saved) {
            if (absl::Status s = write(it->b, *it->saved); !s.ok()) return s;
          }
          break;
        case DirOp::kRemove:
          if (it->saved) {
            if (absl::Status s = write(it->a, *it->saved); !s.ok()) return s;
          }
          break;
        case DirOp::kMkdir: {
          // The directory was never durably linked into its parent: it and its content go.
          std::error_code ignored;
          std::filesystem::remove_all(it->a, ignored);
          break;
        }
        case DirOp::kRmdir:
          (void)target()->CreateDir(it->a);
          break;
      }
    }
  }
  journal_.clear();
  log_.push_back("CRASH");
  return absl::OkStatus();
}

}  // namespace ember::testing
