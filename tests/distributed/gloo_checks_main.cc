// Runs under a real torchrun (gloo_test.sh: 2 and 4 ranks) or a Kubernetes-style environment
// (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, no LOCAL_RANK), with the backend Launch picks for
// CPU ranks without an MPI launcher ("auto", which must be Gloo) or --backend given as argv[1]:
//   gloo_checks [auto|gloo]           the communicator conformance suite, every rank, then a
//                                     second communicator rebuilt in the same process with the
//                                     ranks renumbered; prints "rank R of N: PASSED (backend gloo)"
//   gloo_checks stall K               rank K stops itself (SIGSTOP) at iteration 3 of an engine run;
//                                     every other rank must fail by itself within the 3 s deadline
//                                     with DEADLINE_EXCEEDED naming the event and the iteration
//   gloo_checks exit K                rank K exits (as a crash would, status 9) at iteration 3
//   gloo_checks leave K               rank K leaves early, exiting 0 at iteration 3
//   gloo_checks kinds K               rank K all-reduces 4 doubles while the others all-reduce a
//                                     gradient bucket of 50858 floats: never matched, every rank
//                                     fails at its deadline
//   gloo_checks sizes K               rank K all-reduces 4096 doubles while the others all-reduce
//                                     4 (one Gloo tag once aborted the receiver in Gloo's
//                                     transport thread): every rank fails at its deadline
//   gloo_checks types K               rank K all-reduces 16 floats while the others all-reduce 8
//                                     doubles (the same 64 bytes; once returned OK with garbage)
//   gloo_checks handler_error|order|extra K
//                                     the divergent programs of mpi_checks (communicator_checks.h
//                                     RunDivergenceScenario): a rank-local error reaches every
//                                     peer as ABORTED "rank K failed: <its error>" at once (Gloo's
//                                     failure notice); handlers in another order, or one more, fail
//                                     every rank with the same FAILED_PRECONDITION naming both
// In the fault modes each rank prints "rank R: <status> after <seconds>s" and exits non-zero on
// failure (after a pause, so that torchrun, which stops the other workers at the first failure,
// does not stop a survivor before it has detected the fault by itself).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "distributed/gloo_communicator.h"
#include "distributed/launch.h"
#include "distributed/launcher_env.h"
#include "distributed/tcp_rendezvous.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "handlers/terminate_on_nan.h"
#include "tests/distributed/communicator_checks.h"

namespace {

ember::dist::Communicator* g_comm = nullptr;

TEST(Gloo, Conformance) { ember::dist::testing::CheckAll(*g_comm); }

TEST(Gloo, Backend) {
  EXPECT_EQ(g_comm->backend(), "gloo");
  EXPECT_GE(g_comm->local_rank(), 0);
  EXPECT_LT(g_comm->local_rank(), g_comm->world_size());
}

// The last checks of a healthy run, in the same order on every rank: a collective whose deadline
// has passed fails at once with kDeadlineExceeded (no rank waits), and poisons the communicator.
int PastDeadline() {
  ember::dist::Communicator& comm = *g_comm;
  double v = 1.0;
  const absl::Time start = absl::Now();
  absl::Status s = comm.AllReduce(absl::MakeSpan(&v, 1), ember::dist::ReduceOp::kSum, absl::Now() - absl::Seconds(1));
  absl::Status after = comm.Barrier(absl::Now() + absl::Seconds(5));
  const double took = absl::ToDoubleSeconds(absl::Now() - start);
  const bool ok = s.code() == absl::StatusCode::kDeadlineExceeded &&
                  after.code() == absl::StatusCode::kFailedPrecondition && took < 1.0;
  std::printf("rank %d: past deadline: %s; then: %s (%s)\n", comm.rank(), s.ToString().c_str(),
              after.ToString().c_str(), ok ? "as expected" : "WRONG");
  return ok ? 0 : 1;
}

// A communicator rebuilt in the same process with a new member list (gloo_communicator.h): while
// the first one lives, every rank builds a second with the ranks renumbered (rank r becomes
// world - 1 - r) and an exchange of its own on another port; its collectives see the new ranks.
int Rebuild() {
  absl::StatusOr<ember::dist::LaunchInfo> info = ember::dist::ReadLaunchInfo();
  if (!info.ok()) return 1;
  ember::dist::GlooOptions o;
  o.world_size = info->world_size;
  o.rank = info->world_size - 1 - info->rank;
  o.loopback = true;
  o.init_timeout = absl::Seconds(60);
  const int port = info->rendezvous_port + 2;
  const std::string addr = info->master_addr;
  o.exchange = [&](const std::string& mine, absl::Time deadline) {
    return ember::dist::GatherThroughRank0(o.rank, o.world_size, addr, port, mine, deadline);
  };
  absl::StatusOr<std::unique_ptr<ember::dist::Communicator>> second = ember::dist::CreateGlooCommunicator(o);
  if (!second.ok()) {
    std::printf("rank %d: rebuild: %s\n", info->rank, second.status().ToString().c_str());
    return 1;
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  const double mine = (*second)->rank();
  std::vector<double> all(static_cast<size_t>(o.world_size));
  absl::Status s = (*second)->AllGather(absl::MakeConstSpan(&mine, 1), absl::MakeSpan(all), deadline);
  bool ok = s.ok() && (*second)->rank() == o.rank;
  for (int r = 0; ok && r < o.world_size; ++r) ok = all[static_cast<size_t>(r)] == r;
  double one = 1.0;  // the first communicator still works
  ok = ok && g_comm->AllReduce(absl::MakeSpan(&one, 1), ember::dist::ReduceOp::kSum, deadline).ok() &&
       one == g_comm->world_size();
  std::printf("rank %d: rebuilt as rank %d of %d: %s (%s)\n", info->rank, (*second)->rank(), o.world_size,
              s.ToString().c_str(), ok ? "as expected" : "WRONG");
  return ok ? 0 : 1;
}

// Mismatched all-reduces (sizes: 4 vs 4096 doubles; types: 8 doubles vs 16 floats, the same
// bytes): never matched, so every rank fails at its 3 s deadline; none aborts, none returns OK.
int Mismatch(const std::string& kind, int victim) {
  ember::dist::Communicator& comm = *g_comm;
  const absl::Time start = absl::Now();
  const absl::Time deadline = absl::Now() + absl::Seconds(3);
  const bool odd = comm.rank() == victim;
  absl::Status s;
  if (kind == "sizes") {
    std::vector<double> v(odd ? 4096 : 4, 1.0);
    s = comm.AllReduce(absl::MakeSpan(v), ember::dist::ReduceOp::kSum, deadline);
  } else if (odd) {
    std::vector<float> v(16, 1.0f);
    s = comm.AllReduce(absl::MakeSpan(v), ember::dist::ReduceOp::kSum, deadline);
  } else {
    std::vector<double> v(8, 1.0);
    s = comm.AllReduce(absl::MakeSpan(v), ember::dist::ReduceOp::kSum, deadline);
  }
  std::printf("rank %d: %s after %.1fs (%s)\n", comm.rank(), s.ToString().c_str(),
              absl::ToDoubleSeconds(absl::Now() - start), kind.c_str());
  std::fflush(stdout);
  return s.ok() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const bool fault = argc == 3;
  ember::dist::LaunchOptions options;
  options.backend = argc == 2 ? argv[1] : "auto";
  options.init_timeout = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<ember::dist::Communicator>> comm = ember::dist::Launch(options);
  if (!comm.ok()) {
    std::printf("rank ?: %s\n", comm.status().ToString().c_str());
    return 2;
  }
  g_comm = comm->get();
  if (fault) {
    const std::string kind = argv[1];
    if (kind == "handler_error" || kind == "handler_error_two" || kind == "order" || kind == "extra") {
      const int rc = ember::dist::testing::RunDivergenceScenario(*std::move(comm), kind, std::atoi(argv[2]));
      std::fflush(nullptr);
      if (rc != 0) absl::SleepFor(absl::Seconds(4));  // as below
      ::_exit(rc);
    }
    const int rc = kind == "kinds"                      ? ember::dist::testing::RunKindsScenario(*g_comm, std::atoi(argv[2]))
                   : kind == "sizes" || kind == "types" ? Mismatch(kind, std::atoi(argv[2]))
                                                        : ember::dist::testing::RunFaultScenario(*g_comm, kind, std::atoi(argv[2]));
    std::fflush(nullptr);
    // torchrun stops every worker at the first failure it sees: the survivors wait here so that
    // each has detected the fault by itself (the time printed above) before any of them exits.
    if (rc != 0) absl::SleepFor(absl::Seconds(4));
    ::_exit(rc);  // poisoned: the communicator is left to the process
  }
  int rc = RUN_ALL_TESTS();
  if (rc == 0) rc = Rebuild();
  if (rc == 0) rc = PastDeadline();
  std::printf("rank %d of %d: %s (backend %s)\n", g_comm->rank(), g_comm->world_size(), rc == 0 ? "PASSED" : "FAILED",
              g_comm->backend().c_str());
  std::fflush(nullptr);
  ::_exit(rc);
}
