#include "handlers/checkpoint/snapshot_fence.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"

namespace ember {
namespace {

struct Registry {
  Mutex mu;
  std::vector<std::weak_ptr<Snapshot>> pending ABSL_GUARDED_BY(mu);
};

Mutex hook_mu;
std::function<void(size_t)>* piece_hook ABSL_GUARDED_BY(hook_mu) = nullptr;
std::atomic<bool> has_piece_hook{false};

void RunPieceHook(size_t piece) {
  if (!has_piece_hook.load(std::memory_order_acquire)) return;
  std::function<void(size_t)> hook;
  {
    MutexLock lock(&hook_mu);
    if (piece_hook != nullptr) hook = *piece_hook;
  }
  if (hook) hook(piece);
}

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

int64_t SharedCopy::Work() {
  int64_t bytes = 0;
  for (size_t i = next_.fetch_add(1, std::memory_order_relaxed); i < pieces_.size();
       i = next_.fetch_add(1, std::memory_order_relaxed)) {
    if (hooked_) RunPieceHook(i);
    std::memcpy(pieces_[i].dst, pieces_[i].src, pieces_[i].bytes);
    bytes += static_cast<int64_t>(pieces_[i].bytes);
    done_.fetch_add(1, std::memory_order_release);
  }
  return bytes;
}

void SharedCopy::WaitCopied() const {
  while (done_.load(std::memory_order_acquire) < pieces_.size()) std::this_thread::yield();
}

int64_t SharedCopy::Verify() {
  int64_t bytes = 0;
  for (size_t i = next_verify_.fetch_add(1, std::memory_order_relaxed); i < pieces_.size();
       i = next_verify_.fetch_add(1, std::memory_order_relaxed)) {
    if (std::memcmp(pieces_[i].dst, pieces_[i].src, pieces_[i].bytes) != 0) {
      MutexLock lock(&mu_);
      changed_.push_back(pieces_[i].tag);
    }
    bytes += static_cast<int64_t>(pieces_[i].bytes);
    verified_.fetch_add(1, std::memory_order_release);
  }
  return bytes;
}

void SharedCopy::WaitVerified() const {
  while (verified_.load(std::memory_order_acquire) < pieces_.size()) std::this_thread::yield();
}

std::vector<size_t> SharedCopy::changed_tags() const {
  MutexLock lock(&mu_);
  std::vector<size_t> tags = changed_;
  std::sort(tags.begin(), tags.end());
  tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
  return tags;
}

void SetSnapshotPieceHookForTesting(std::function<void(size_t piece)> hook) {
  MutexLock lock(&hook_mu);
  delete piece_hook;
  piece_hook = hook ? new std::function<void(size_t)>(std::move(hook)) : nullptr;
  has_piece_hook.store(piece_hook != nullptr, std::memory_order_release);
}

void Snapshot::Share(std::shared_ptr<SharedCopy> copy) {
  copy->set_hooked();
  {
    MutexLock lock(&mu_);
    copy_ = std::move(copy);
  }
  cv_.SignalAll();  // a waiter may help from now on
}

void Snapshot::Finish() {
  {
    MutexLock lock(&mu_);
    finished_ = true;
  }
  cv_.SignalAll();
}

bool Snapshot::finished() const {
  MutexLock lock(&mu_);
  return finished_;
}

absl::Duration Snapshot::Wait() {
  MutexLock lock(&mu_);
  if (finished_) return absl::ZeroDuration();
  const absl::Time start = absl::Now();
  // Until the copy is finished: help with its pieces as soon as the writer shares them (it may
  // still be planning the copy when the fence is reached), else sleep.
  while (!finished_) {
    if (copy_ != nullptr && !copy_->all_claimed()) {
      std::shared_ptr<SharedCopy> copy = copy_;
      lock.Unlock();
      helped_bytes_.fetch_add(copy->Work(), std::memory_order_relaxed);
      lock.Lock();
      continue;
    }
    // Every piece is copied: help compare them with their sources (the writer does the same).
    if (copy_ != nullptr && copy_->copied() && !copy_->all_verify_claimed()) {
      std::shared_ptr<SharedCopy> copy = copy_;
      lock.Unlock();
      copy->Verify();
      lock.Lock();
      continue;
    }
    cv_.Wait(&mu_);
  }
  const absl::Duration waited = absl::Now() - start;
  if (blocked_ns_ != nullptr) blocked_ns_->fetch_add(absl::ToInt64Nanoseconds(waited), std::memory_order_relaxed);
  return waited;
}

std::shared_ptr<Snapshot> BeginSnapshot(std::atomic<int64_t>* blocked_ns) {
  auto snapshot = std::make_shared<Snapshot>(blocked_ns);
  Registry& r = registry();
  MutexLock lock(&r.mu);
  Prune(r.pending);
  r.pending.push_back(snapshot);
  return snapshot;
}

absl::Duration WaitForSnapshots() {
  std::vector<std::shared_ptr<Snapshot>> waiting;
  Registry& r = registry();
  {
    MutexLock lock(&r.mu);
    if (r.pending.empty()) return absl::ZeroDuration();
    for (const std::weak_ptr<Snapshot>& s : r.pending) {
      if (auto p = s.lock()) waiting.push_back(std::move(p));
    }
  }
  absl::Duration waited;
  for (const std::shared_ptr<Snapshot>& s : waiting) waited += s->Wait();
  MutexLock lock(&r.mu);
  Prune(r.pending);
  return waited;
}

}  // namespace ember
