#include "handlers/checkpoint/in_memory_saver.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "handlers/serialization/torch_save.h"

namespace ember {

absl::StatusOr<std::string> InMemorySaver::ReadBytes(const std::string& filename) {
  MutexLock lock(&mu_);
  auto it = files_.find(filename);
  if (it == files_.end()) return absl::NotFoundError(absl::StrCat("no checkpoint ", filename));
  return it->second.first;
}

absl::Status InMemorySaver::Save(const Value& checkpoint, const std::string& filename,
                                 const CheckpointMetadata& metadata) {
  EMBER_ASSIGN_OR_RETURN(std::string bytes, SerializeTorchSave(checkpoint));
  MutexLock lock(&mu_);
  files_[filename] = {std::move(bytes), metadata};
  ops_.push_back("save " + filename);
  return absl::OkStatus();
}

absl::Status InMemorySaver::Remove(const std::string& filename) {
  MutexLock lock(&mu_);
  ops_.push_back("remove " + filename);
  if (files_.erase(filename) == 0) return absl::NotFoundError(absl::StrCat("no checkpoint ", filename));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<std::string, CheckpointMetadata>>> InMemorySaver::List() {
  MutexLock lock(&mu_);
  std::vector<std::pair<std::string, CheckpointMetadata>> out;
  for (const auto& [name, entry] : files_) out.emplace_back(name, entry.second);
  return out;
}

absl::StatusOr<Value> InMemorySaver::Load(const std::string& filename) {
  MutexLock lock(&mu_);
  auto it = files_.find(filename);
  if (it == files_.end()) return absl::NotFoundError(absl::StrCat("no checkpoint ", filename));
  return ReadTorchSave(it->second.first, filename);
}

absl::StatusOr<std::string> InMemorySaver::SetAside(const std::string& filename) {
  MutexLock lock(&mu_);
  auto it = files_.find(filename);
  if (it == files_.end()) return absl::NotFoundError(absl::StrCat("no checkpoint ", filename));
  std::string aside = absl::StrCat(filename, ".abandoned");
  for (int i = 1; aside_.count(aside) > 0; ++i) aside = absl::StrCat(filename, ".abandoned.", i);
  aside_[aside] = std::move(it->second);
  files_.erase(it);
  ops_.push_back("set aside " + filename);
  return aside;
}

std::vector<std::string> InMemorySaver::set_aside() const {
  MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [name, entry] : aside_) out.push_back(name);
  return out;
}

std::vector<std::string> InMemorySaver::filenames() const {
  MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [name, entry] : files_) out.push_back(name);
  return out;
}

std::vector<std::string> InMemorySaver::ops() const {
  MutexLock lock(&mu_);
  return ops_;
}

}  // namespace ember
