// File: handlers/checkpoint/in_memory_saver.h
//
// InMemorySaver: a SaveHandler that keeps each checkpoint's serialized torch.save bytes in memory
// (tests, and users who ship checkpoints elsewhere), and records the order of saves and removes.
// Thread-safe.
//
// Example:
//   auto saver = std::make_shared<ember::InMemorySaver>();
//   auto ckpt = ember::Checkpoint::Create({{"model", model}}, saver, {.n_saved = 2});
//   // saver->filenames() == {"model_3.pt", "model_4.pt"} after four saves
#ifndef EMBER_HANDLERS_IN_MEMORY_SAVER_H_
#define EMBER_HANDLERS_IN_MEMORY_SAVER_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "handlers/checkpoint/save_handler.h"

namespace ember {

class InMemorySaver final : public SaveHandler {
 public:
  absl::Status Save(const Value& checkpoint, const std::string& filename,
                    const CheckpointMetadata& metadata) override;
  absl::Status Remove(const std::string& filename) override;
  absl::StatusOr<std::vector<std::pair<std::string, CheckpointMetadata>>> List() override;
  absl::StatusOr<Value> Load(const std::string& filename) override;
  absl::StatusOr<std::string> ReadBytes(const std::string& filename) override;
  // Moves it to set_aside() under "NAME.abandoned" (never listed again).
  absl::StatusOr<std::string> SetAside(const std::string& filename) override;
  std::vector<std::string> set_aside() const;

  std::vector<std::string> filenames() const;
  // Saves and removes, in order ("save a.pt", "remove a.pt").
  std::vector<std::string> ops() const;

 private:
  mutable Mutex mu_;
  std::map<std::string, std::pair<std::string, CheckpointMetadata>> files_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> ops_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::pair<std::string, CheckpointMetadata>> aside_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ember

#endif  // EMBER_HANDLERS_IN_MEMORY_SAVER_H_
