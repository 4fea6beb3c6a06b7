// File: handlers/snapshot_fence.h
//
// The fence between a background snapshot of the training state and the next in-place change of
// that state.
//
// A Checkpoint with `snapshot_in_background` (checkpoint.h) does not copy the state on the
// training thread: it hands the state's tensors to its writer thread, which copies them and then
// writes the file. The parameters and the optimizer's buffers do not change between the end of
// one optimizer step and the next, so the copy can run while the next step's forward and backward
// compute. WaitForSnapshots() is the point where that must end: it returns once every snapshot
// begun so far in this process has finished copying. Call it before anything changes the saved
// tensors in place: optimizer.step(), a load, BatchNorm's running statistics in a training-mode
// forward. DataParallel::AllReduceGradients() calls it on its way out, so a training step that
// averages its gradients with DataParallel and then steps the optimizer needs nothing more.
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
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "absl/time/time.h"

namespace ember {

// One snapshot in progress. Made by BeginSnapshot() on the training thread; Finish() is called by
// whoever copies (the checkpoint's writer thread) once the copy is complete.
class Snapshot {
 public:
  explicit Snapshot(std::atomic<int64_t>* blocked_ns) : blocked_ns_(blocked_ns) {}
  void Finish();
  // Blocks until Finish(); returns the time waited (also added to the owner's blocked time).
  absl::Duration Wait();
  bool finished() const;

 private:
  std::atomic<int64_t>* blocked_ns_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool finished_ = false;
};

// Registers a snapshot in progress; waits at the fence are added to *blocked_ns (may be null).
std::shared_ptr<Snapshot> BeginSnapshot(std::atomic<int64_t>* blocked_ns);

// Returns once every snapshot begun before the call has finished copying; the time waited.
absl::Duration WaitForSnapshots();

}  // namespace ember

#endif  // EMBER_HANDLERS_SNAPSHOT_FENCE_H_
