// Runs under mpirun (2 and 4 ranks, inside bazel test; time_limit_mpi_test.sh): every rank runs
// `time_limit_mpi CLOCKS AGREEMENT`, a trainer of 3 epochs of 4 iterations whose step advances
// this rank's fake clock by 1 s, with TimeLimit(limit_sec = 5) at ITERATION_COMPLETED.
//   CLOCKS     staggered: rank r's clock runs r seconds ahead of rank 0's;
//              last: only the last rank's runs ahead, by 2 s (it alone is over the limit first)
//   AGREEMENT  agreed: the trainer agrees through MPI (the contract);
//              local: each rank decides alone (a single-process communicator), the negative
//              control that shows the script's check catches ranks that stop apart
// Each rank prints "rank R: <status>; stopped=<0|1> epoch=E iteration=I; <outcome summary>".
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/clock.h"
#include "base/status_macros.h"
#include "distributed/mpi_communicator.h"
#include "tests/mpi/rank_main.h"
#include "distributed/single_process_communicator.h"
#include "engine/engine.h"
#include "handlers/time_limit.h"

namespace {

absl::StatusOr<std::string> Run(ember::dist::Communicator& comm, const std::string& clocks, bool agreed) {
  if (clocks != "staggered" && clocks != "last") {
    return absl::InvalidArgumentError(absl::StrFormat("CLOCKS must be staggered or last, got '%s'", clocks));
  }
  ember::FakeClock clock(1000.0);
  EMBER_ASSIGN_OR_RETURN(std::unique_ptr<ember::TimeLimit> limit,
                         ember::TimeLimit::Create({.limit_sec = 5, .clock = &clock}));
  const int r = comm.rank();
  const int n = comm.world_size();
  clock.Advance(clocks == "staggered" ? r : (r == n - 1 ? 2.0 : 0.0));
  ember::Engine trainer([&](ember::Engine&) { clock.Advance(1.0); });
  ember::dist::SingleProcessCommunicator alone;
  trainer.set_communicator(agreed ? &comm : &alone);
  trainer.set_collective_timeout(absl::Seconds(5));
  trainer.On(ember::Events::IterationCompleted(), *limit);
  EMBER_RETURN_IF_ERROR(trainer.Run({.max_epochs = 3, .epoch_length = 4}));
  return absl::StrFormat("stopped=%d epoch=%d iteration=%d; %s", limit->stopped() ? 1 : 0,
                         trainer.state().epoch, trainer.state().iteration, trainer.outcome().Summary());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s staggered|last agreed|local\n", argv[0]);
    return 2;
  }
  ember::dist::Communicator& comm = ember::testing::MpiWorld();
  const absl::StatusOr<std::string> s = Run(comm, argv[1], std::string(argv[2]) == "agreed");
  std::printf("rank %d: %s; %s\n", comm.rank(), s.status().ToString().c_str(), s.ok() ? s->c_str() : "");
  return ember::testing::ExitLettingOthersReport(s.ok() ? 0 : 1);
}
