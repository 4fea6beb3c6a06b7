// File: handlers/checkpoint/snapshot_fence.h
//
// The fence between a background snapshot of the training state and the next in-place change of
// that state.
//
// A Checkpoint with `snapshot_in_background` (checkpoint.h) does not copy the state on the
// training thread: it copies there only what may change outside optimizer.step() (module
// buffers such as BatchNorm's running statistics, which a training-mode forward changes, and
// objects other than modules and optimizers), and hands the module parameters and the optimizer's
// state to its writer thread, which copies them and then writes the file. Those do not change
// between the end of one optimizer step and the next, so their copy can run while the next step's
// forward and backward compute. WaitForSnapshots() is the point where that must end: it returns
// once every snapshot begun so far in this process has finished copying (and checking) its copy.
// Call it before anything changes parameters or optimizer state in place: optimizer.step(), a
// load. A forward needs no fence. DataParallel::AllReduceGradients() calls it on its way out, so a
// training step that averages its gradients with DataParallel and then steps the optimizer needs
// nothing more. The fence is the guarantee; what the writer detects without it is in checkpoint.h.
//
// A thread that waits at the fence does not sleep while bytes remain to copy: the writer shares
// its copy as pieces (SharedCopy), and the waiter claims the pieces nobody has taken yet, so an
// empty step waits for the copy done on two threads, not one.
//
// Contract:
//   - WaitForSnapshots() is cheap when nothing is being copied (one mutex, no allocation); it may
//     be called from any thread, any number of times.
//   - The time a caller waits is added to the blocked time of the checkpointer whose snapshot it
//     waited for (Checkpoint::blocked_time(), the goodput accounting).
//   - A snapshot always ends (Finish() runs on every path of the writer, errors included), so the
//     fence never waits for a writer that has given up.
//
// Example (a training step of one process, no DataParallel):
//   loss.backward();
//   ember::WaitForSnapshots();   // a checkpoint of the previous step may still be copying
//   optimizer.step();
#ifndef EMBER_HANDLERS_SNAPSHOT_FENCE_H_
#define EMBER_HANDLERS_SNAPSHOT_FENCE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "base/mutex.h"

namespace ember {

// A byte range to copy; `tag` says what it belongs to (the checkpoint: which tensor).
struct CopyPiece {
  char* dst;
  const char* src;
  size_t bytes;
  size_t tag = 0;
};

// Pieces that any number of threads copy together: each claims the next unclaimed piece until
// none is left. The memory they name must outlive WaitCopied(). Thread-safe.
//
// Verification (a background snapshot): once every piece is copied, Verify() re-reads each
// source and compares it with its copy; a piece whose source changed since it was copied is
// recorded (changed_tags()). Any number of threads verify together, as they copy.
class SharedCopy {
 public:
  explicit SharedCopy(std::vector<CopyPiece> pieces) : pieces_(std::move(pieces)) {}
  // Claims and copies pieces until none is unclaimed; returns the bytes this call copied.
  int64_t Work();
  // Returns once every piece is copied, the ones other threads claimed included (they are copying
  // them: at most one piece each).
  void WaitCopied() const;
  bool all_claimed() const { return next_.load(std::memory_order_relaxed) >= pieces_.size(); }
  bool copied() const { return done_.load(std::memory_order_acquire) >= pieces_.size(); }
  // After WaitCopied(): claims and compares pieces until none is unclaimed; returns the bytes
  // this call compared. WaitVerified() returns once every piece is compared.
  int64_t Verify();
  void WaitVerified() const;
  bool all_verify_claimed() const { return next_verify_.load(std::memory_order_relaxed) >= pieces_.size(); }
  // After WaitVerified(): the tags of the pieces whose source differed from their copy, ascending.
  std::vector<size_t> changed_tags() const ABSL_LOCKS_EXCLUDED(mu_);
  // A background snapshot's copy: Work() calls the testing hook before each piece.
  void set_hooked() { hooked_ = true; }

 private:
  const std::vector<CopyPiece> pieces_;
  bool hooked_ = false;
  std::atomic<size_t> next_{0};
  std::atomic<size_t> done_{0};
  std::atomic<size_t> next_verify_{0};
  std::atomic<size_t> verified_{0};
  mutable Mutex mu_;
  std::vector<size_t> changed_ ABSL_GUARDED_BY(mu_);
};

// One snapshot in progress. Made by BeginSnapshot() on the training thread; Finish() is called by
// whoever copies (the checkpoint's writer thread) once the copy is complete.
class Snapshot {
 public:
  explicit Snapshot(std::atomic<int64_t>* blocked_ns) : blocked_ns_(blocked_ns) {}
  // Offers the copy's pieces to the threads that wait (the writer still calls Finish()).
  void Share(std::shared_ptr<SharedCopy> copy) ABSL_LOCKS_EXCLUDED(mu_);
  void Finish() ABSL_LOCKS_EXCLUDED(mu_);
  // Copies shared pieces nobody has claimed (and, once they are copied, verifies them), then
  // blocks until Finish(); returns the time (helping included, also added to the owner's blocked
  // time).
  absl::Duration Wait() ABSL_LOCKS_EXCLUDED(mu_);
  bool finished() const ABSL_LOCKS_EXCLUDED(mu_);
  // Bytes the waiters copied.
  int64_t helped_bytes() const { return helped_bytes_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t>* blocked_ns_;
  std::atomic<int64_t> helped_bytes_{0};
  mutable Mutex mu_;
  CondVar cv_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<SharedCopy> copy_ ABSL_GUARDED_BY(mu_);
};

// Registers a snapshot in progress; waits at the fence are added to *blocked_ns (may be null).
std::shared_ptr<Snapshot> BeginSnapshot(std::atomic<int64_t>* blocked_ns);

// Returns once every snapshot begun before the call has finished copying; the time waited.
absl::Duration WaitForSnapshots();

// Testing: `hook(i)` runs on the thread that copies piece i of a background snapshot, before it
// copies it (a test holds the copy there); an empty function removes it.
void SetSnapshotPieceHookForTesting(std::function<void(size_t piece)> hook);

}  // namespace ember

#endif  // EMBER_HANDLERS_SNAPSHOT_FENCE_H_
