#include "handlers/snapshot_fence.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/time/clock.h"

namespace ember {
namespace {

struct Registry {
  std::mutex mu;
  std::vector<std::weak_ptr<Snapshot>> pending;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: writers may finish during exit
  return *r;
}

// Drops the snapshots that have finished (or whose checkpointer is gone). Called under Registry::mu.
void Prune(std::vector<std::weak_ptr<Snapshot>>& pending) {
  std::erase_if(pending, [](const std::weak_ptr<Snapshot>& s) {
    auto p = s.lock();
    return p == nullptr || p->finished();
  });
}

}  // namespace

void Snapshot::Finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
  }
  cv_.notify_all();
}

bool Snapshot::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

absl::Duration Snapshot::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  if (finished_) return absl::ZeroDuration();
  const absl::Time start = absl::Now();
  cv_.wait(lock, [this] { return finished_; });
  const absl::Duration waited = absl::Now() - start;
  if (blocked_ns_ != nullptr) blocked_ns_->fetch_add(absl::ToInt64Nanoseconds(waited), std::memory_order_relaxed);
  return waited;
}

std::shared_ptr<Snapshot> BeginSnapshot(std::atomic<int64_t>* blocked_ns) {
  auto snapshot = std::make_shared<Snapshot>(blocked_ns);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  Prune(r.pending);
  r.pending.push_back(snapshot);
  return snapshot;
}

absl::Duration WaitForSnapshots() {
  std::vector<std::shared_ptr<Snapshot>> waiting;
  Registry& r = registry();
  {
    std::lock_guard<std::mutex> lock(r.mu);
    if (r.pending.empty()) return absl::ZeroDuration();
    for (const std::weak_ptr<Snapshot>& s : r.pending) {
      if (auto p = s.lock()) waiting.push_back(std::move(p));
    }
  }
  absl::Duration waited;
  for (const std::shared_ptr<Snapshot>& s : waiting) waited += s->Wait();
  std::lock_guard<std::mutex> lock(r.mu);
  Prune(r.pending);
  return waited;
}

}  // namespace ember
