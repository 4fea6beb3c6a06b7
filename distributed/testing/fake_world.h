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
// Thread safety: each rank's communicator is used by its own thread; Stall/Kill may be called
// from any thread. Destroying the world releases stalled ranks (their call returns kAborted);
// all rank threads must be joined before the world is destroyed.
#ifndef EMBER_DISTRIBUTED_TESTING_FAKE_WORLD_H_
#define EMBER_DISTRIBUTED_TESTING_FAKE_WORLD_H_

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
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

  // Exchanges one payload per rank for collective number `seq` (internal; used by the ranks'
  // communicators).
  absl::StatusOr<std::vector<std::string>> Exchange(int rank, int64_t seq, std::string payload,
                                                    absl::Time deadline);

 private:
  struct Round {
    std::vector<std::optional<std::string>> payloads;
    int readers = 0;
  };

  const int world_size_;
  std::vector<std::unique_ptr<Communicator>> comms_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, Round> rounds_;
  std::vector<bool> stalled_;
  std::vector<bool> killed_;
  bool shutting_down_ = false;
};

}  // namespace ember::dist::testing

#endif  // EMBER_DISTRIBUTED_TESTING_FAKE_WORLD_H_
