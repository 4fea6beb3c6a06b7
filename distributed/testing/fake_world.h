// File: distributed/testing/fake_world.h
//
// FakeWorld: N ranks of one process, each with its own Communicator, meant to be driven by N
// threads (one per rank), for testing multi-rank behaviour and faults without MPI. Collectives
// meet in shared memory and reduce in rank order (deterministic).
//
// Faults: Stall(r) makes rank r block in its next collective until the world is destroyed (a
// hung or SIGSTOPped process); Kill(r) makes rank r leave (a crashed process: its calls fail and
// it never joins again). The other ranks then fail at their deadline with kDeadlineExceeded
// naming the ranks that did not join.
//
// As the MPI backend: each kind of collective has a matching space (channel) of its own
// (gradient buffers of StartAllReduce, blocking all-reduces, all-gathers, broadcasts, barriers,
// control), ranks whose payloads differ in size get an error instead of a bad read, and a rank's
// failure notice (Communicator::Poison) makes every peer's wait, current or next, fail with
// kAborted "rank R failed: ..." (the control channel's Meet excepted).
//
// Thread safety: each rank's communicator is used by its own thread; Stall/Kill may be called
// from any thread. Destroying the world releases stalled ranks (their call returns kAborted);
// all rank threads must be joined before the world is destroyed.
#ifndef EMBER_DISTRIBUTED_TESTING_FAKE_WORLD_H_
#define EMBER_DISTRIBUTED_TESTING_FAKE_WORLD_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "distributed/communicator.h"

namespace ember::dist::testing {

class FakeWorld {
 public:
  explicit FakeWorld(int world_size, int ranks_per_host = 0);
  ~FakeWorld();

  int world_size() const { return world_size_; }
  Communicator* comm(int rank) { return comms_[rank].get(); }

  // Runs fn(communicator of rank r) on one thread per rank and waits for all of them.
  template <typename F>
  void RunOnEveryRank(F fn) {
    std::vector<std::thread> threads;
    for (int r = 0; r < world_size_; ++r) threads.emplace_back([this, &fn, r] { fn(*comms_[r]); });
    for (auto& t : threads) t.join();
  }

  void Stall(int rank);
  void Kill(int rank);

  enum Channel { kBuffers, kReduce, kGather, kBroadcast, kBarrier, kControl, kChannels };
  // Exchanges one payload per rank for collective number `seq` of `channel` (internal; used by
  // the ranks' communicators). Unless the channel is kControl, fails with the first failure
  // notice of another rank.
  absl::StatusOr<std::vector<std::string>> Exchange(int rank, Channel channel, int64_t seq, std::string payload,
                                                    absl::Time deadline);
  // Rank `rank`'s failure notice (internal; a killed rank sends none).
  void Notify(int rank, std::string text);
  // The first notice of a rank other than `rank`, or OK.
  absl::Status NoticeFor(int rank);

 private:
  struct Round {
    std::vector<std::optional<std::string>> payloads;
    int readers = 0;
  };

  const int world_size_;
  std::vector<std::unique_ptr<Communicator>> comms_;
  Mutex mu_;
  CondVar cv_;
  absl::Status NoticeForLocked(int rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::map<std::pair<int, int64_t>, Round> rounds_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<int, std::string>> notices_ ABSL_GUARDED_BY(mu_);  // in order of arrival
  std::vector<bool> stalled_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> killed_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ember::dist::testing

#endif  // EMBER_DISTRIBUTED_TESTING_FAKE_WORLD_H_
