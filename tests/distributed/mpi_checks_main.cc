// Runs under mpirun (2 and 4 ranks, inside bazel test):
//   mpi_checks            the communicator conformance suite on MPI_COMM_WORLD, every rank
//   mpi_checks stall K    rank K stops itself (SIGSTOP) at iteration 3 of an engine run; every
//                         other rank must fail within the deadline with an error that names the
//                         event and the iteration, and exit non-zero.
//   mpi_checks exit K     rank K exits (as a crash would) at iteration 3; same expectation.
//   mpi_checks swallow K  as stall, with an ignite-style EXCEPTION_RAISED handler that logs and
//                         swallows every exception: a failed collective must still end the run
//                         on every survivor with DEADLINE_EXCEEDED (handlers observe, never
//                         swallow it).
//   mpi_checks handler_error K
//                         the case 1: a plain handler at COMPLETED returns an error on
//                         rank K only, before the synchronized handler of that firing proposes;
//                         the other ranks are in the firing's agreement. They must fail promptly
//                         (no deadline waited out) with ABORTED "rank K failed: <its error>", no
//                         rank may decide on the agreement (a garbage gather), and the World's
//                         shutdown meeting (control channel) must not complete it either.
//   mpi_checks order K    the case 3: rank K registers the two synchronized handlers of
//                         COMPLETED in the other order (after the run's start); every rank must
//                         fail with the same FAILED_PRECONDITION naming both orders, and nobody
//                         decides.
//   mpi_checks extra K    the case 4: rank K attaches one more handler at COMPLETED
//                         (another number of values): the same, no MPI_ERR_TRUNCATE.
//   mpi_checks kinds K    the case 2: rank K all-reduces 4 doubles while the others
//                         all-reduce a gradient bucket of 50858 floats: different matching
//                         spaces, every rank fails at its deadline, no heap corruption; under
//                         EMBER_DISTRIBUTED_DEBUG=DETAIL every rank fails at once naming both.
// In the fault modes the process then returns from main normally: the communicator's destructor
// must not block in MPI_Finalize on the stalled peer (shutdown is bounded in the library).
#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "distributed/launch.h"
#include "distributed/mpi_communicator.h"
#include "engine/synchronized_handler.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "handlers/terminate_on_nan.h"
#include "tests/distributed/communicator_checks.h"

namespace {

ember::dist::Communicator* g_comm = nullptr;

TEST(Mpi, Conformance) { ember::dist::testing::CheckAll(*g_comm); }

TEST(Mpi, LocalRankAndSize) {
  EXPECT_EQ(g_comm->backend(), "mpi");
  EXPECT_GE(g_comm->local_rank(), 0);
  EXPECT_LT(g_comm->local_rank(), g_comm->world_size());
}

}  // namespace

namespace {

// The case 2: rank K posts a metric all-reduce of 4 doubles while the others post a
// gradient all-reduce of 50858 floats. "kinds": different matching spaces, so the pair never meets
// (each waits for its deadline; no heap corruption). "strict" (EMBER_DISTRIBUTED_DEBUG=DETAIL):
// the fingerprints differ and every rank fails at once naming each rank's collective.
// A collective given up on completes later (mpi_checks late K KIND, KIND allreduce | buffer |
// allgather | broadcast): rank K joins 2 s late; the others give up at their 0.5 s deadline, free their
// buffers, allocate new ones filled with a sentinel, and then drive MPI (a barrier on
// MPI_COMM_WORLD, outside Ember's channels) while rank K's data arrives. The late data must land
// in memory the communicator left to MPI, never in freed memory that has been reused (the
// sentinels must survive; under ASan the transport's memcpy into freed memory is reported), and
// the given-up collective is counted by dist::AbandonedToTransport().
int Late(int victim, const std::string& kind) {
  ember::dist::Communicator& comm = *g_comm;
  const bool late = comm.rank() == victim;
  constexpr size_t kN = 4096;
  constexpr double kSentinel = -12345.0;
  const int64_t abandoned_before = ember::dist::AbandonedToTransport();
  if (late) absl::SleepFor(absl::Seconds(2));
  const absl::Time deadline = absl::Now() + (late ? absl::Seconds(4) : absl::Milliseconds(500));
  absl::Status s;
  {
    std::vector<double> values(kN, comm.rank() + 1.0);
    std::vector<double> gathered(kN * static_cast<size_t>(comm.world_size()));
    std::string bytes(late ? kN * 8 : 0, 'x');
    if (kind == "allreduce") {
      s = comm.AllReduce(absl::MakeSpan(values), ember::dist::ReduceOp::kSum, deadline);
    } else if (kind == "allgather") {
      s = comm.AllGather(values, absl::MakeSpan(gathered), deadline);
    } else if (kind == "buffer") {  // the blocking all-reduce of a typed host buffer
      s = comm.AllReduce(ember::dist::Buffer::Host(values.data(), values.size()), ember::dist::ReduceOp::kSum,
                         deadline);
    } else if (kind == "broadcast") {
      s = comm.Broadcast(bytes, victim, deadline);
    } else {
      std::fprintf(stderr, "unknown kind %s\n", kind.c_str());
      return 2;
    }
  }  // the buffers are freed here
  std::vector<std::vector<double>> sentinels;
  for (int i = 0; i < 8; ++i) sentinels.emplace_back(kN * static_cast<size_t>(comm.world_size()), kSentinel);
  MPI_Barrier(MPI_COMM_WORLD);  // progresses what was posted (Ember's poisoned communicator starts nothing)
  size_t overwritten = 0;
  for (const auto& v : sentinels) {
    for (double x : v) overwritten += x != kSentinel ? 1 : 0;
  }
  std::printf("rank %d: late %d: %s: %s; abandoned %lld; sentinel values overwritten %zu\n", comm.rank(),
              late ? 1 : 0, kind.c_str(), s.ToString().c_str(),
              static_cast<long long>(ember::dist::AbandonedToTransport() - abandoned_before), overwritten);
  std::fflush(stdout);
  return overwritten == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = ember::dist::MpiCommunicator::Create();
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", comm.status().ToString().c_str());
    return 2;
  }
  g_comm = comm->get();
  if (argc == 3 && (std::string(argv[1]) == "handler_error" || std::string(argv[1]) == "order" ||
                    std::string(argv[1]) == "extra")) {
    int rc = ember::dist::testing::RunDivergenceScenario(*std::move(comm), argv[1], std::atoi(argv[2]));
    std::fflush(nullptr);
    ::_exit(rc);  // poisoned: MPI is not finalized
  }
  if (argc == 4 && std::string(argv[1]) == "late") {
    int rc = Late(std::atoi(argv[2]), argv[3]);
    std::fflush(nullptr);
    ::_exit(rc);  // poisoned: MPI is not finalized
  }
  if (argc == 3 && std::string(argv[1]) == "kinds") {
    int rc = ember::dist::testing::RunKindsScenario(*g_comm, std::atoi(argv[2]));
    absl::SleepFor(absl::Seconds(2));  // mpirun ends the job at the first non-zero exit
    std::fflush(nullptr);
    ::_exit(rc);  // poisoned: MPI is not finalized
  }
  if (argc == 3) {
    int rc = ember::dist::testing::RunFaultScenario(*g_comm, argv[1], std::atoi(argv[2]));
    std::fflush(nullptr);
    // mpirun tears the job down at the first non-zero exit: give the other survivors (whose
    // deadlines end within milliseconds of this one's on a quiet machine, later on a loaded one
    // with 4 ranks on 2 cores) time to print their own report.
    if (rc != 0) absl::SleepFor(absl::Seconds(3));
    comm->reset();  // poisoned: skips MPI_Finalize, which would block on the stalled peer
    return rc;
  }
  int rc = RUN_ALL_TESTS();
  std::printf("rank %d of %d: %s\n", g_comm->rank(), g_comm->world_size(), rc == 0 ? "PASSED" : "FAILED");
  return rc;
}
