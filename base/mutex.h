// File: base/mutex.h
//
// Mutex, MutexLock and CondVar: std::mutex and std::condition_variable with Abseil's
// thread-safety annotations, so that clang's -Wthread-safety checks every member declared
// ABSL_GUARDED_BY(mu_) (tools/thread_safety_check.sh, a step of .ci/run).
//
// Why a wrapper and not absl::Mutex: libstdc++'s std::mutex carries no capability attribute, so
// clang cannot check code that locks it; absl::Mutex can be checked, but Debian's Abseil is built
// without ThreadSanitizer, so under --config=tsan its lock and unlock (inside the uninstrumented
// libabsl_synchronization.so) would be invisible and every guarded access would be reported as a
// race. These classes are the standard primitives, unchanged (TSan intercepts them, the timed
// waits keep std::condition_variable's clock semantics), with the annotations added; under gcc the
// annotations expand to nothing and the code is what it was.
//
// Contract: exactly std::mutex's (not recursive; unlock only from the locking thread) and
// std::condition_variable's (spurious wake-ups happen: wait in a loop on the predicate, under the
// mutex). Thread-safe.
//
// Example:
//   class Queue {
//    public:
//     void Push(int v) ABSL_LOCKS_EXCLUDED(mu_) {
//       ember::MutexLock lock(&mu_);
//       items_.push_back(v);
//       cv_.SignalAll();
//     }
//     int Pop() ABSL_LOCKS_EXCLUDED(mu_) {
//       ember::MutexLock lock(&mu_);
//       while (items_.empty()) cv_.Wait(&mu_);
//       int v = items_.front();
//       items_.pop_front();
//       return v;
//     }
//    private:
//     ember::Mutex mu_;
//     ember::CondVar cv_;
//     std::deque<int> items_ ABSL_GUARDED_BY(mu_);
//   };
#ifndef EMBER_BASE_MUTEX_H_
#define EMBER_BASE_MUTEX_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"

namespace ember {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  // For the analysis only: tells clang the caller holds this mutex (it checks nothing at run time).
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds *mu from construction to destruction. Unlock()/Lock() release and retake it in between
// (for work that must run without the mutex); the destructor unlocks only if it is held.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() {
    if (held_) mu_->Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void Unlock() ABSL_UNLOCK_FUNCTION() {
    mu_->Unlock();
    held_ = false;
  }
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    mu_->Lock();
    held_ = true;
  }

 private:
  Mutex* const mu_;
  bool held_ = true;
};

class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  // Atomically releases *mu and blocks until woken (or spuriously); holds *mu again on return.
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();  // *mu stays held: the caller's MutexLock owns it
  }
  // As Wait, until `deadline` (std::condition_variable::wait_until on the system clock). Returns
  // true if the deadline passed (std::cv_status::timeout), false if woken before it.
  bool WaitWithDeadline(Mutex* mu, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    const bool timed_out = cv_.wait_until(lock, absl::ToChronoTime(deadline)) == std::cv_status::timeout;
    lock.release();
    return timed_out;
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace ember

#endif  // EMBER_BASE_MUTEX_H_
