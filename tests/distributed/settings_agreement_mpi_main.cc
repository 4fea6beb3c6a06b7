// Runs under mpirun (2 and 4 ranks, inside bazel test; settings_agreement_mpi_test.sh):
//   settings_agreement_mpi SCENARIO        every rank agrees on its settings of SCENARIO
//                                          (settings_agreement_scenarios.h), then runs a barrier;
//   settings_agreement_mpi mpmd LR         "--lr" given on the command line (an MPMD job passes a
//                                          different one to some ranks).
// Each rank prints "rank R: agreement: <status>", "rank R: expected: yes|no|<expected>" and
// "rank R: barrier: <status>", and exits 0 if the agreement succeeded, 1 otherwise.
#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "distributed/mpi_communicator.h"
#include "distributed/settings_agreement.h"
#include "tests/distributed/settings_agreement_scenarios.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s SCENARIO | mpmd LR\n", argv[0]);
    return 2;
  }
  const std::string name = argv[1];
  auto created = ember::dist::MpiCommunicator::Create();
  if (!created.ok()) {
    std::fprintf(stderr, "%s\n", created.status().ToString().c_str());
    return 2;
  }
  ember::dist::Communicator& comm = **created;
  const int r = comm.rank();
  const int n = comm.world_size();
  absl::Status s;
  std::string expected;
  if (name == "mpmd") {
    ember::dist::SettingList flags;
    flags.Add("--data", "/data/train.csv").Add("--lr", argc > 2 ? argv[2] : "0.1").AddInt("--seed", 1);
    s = ember::dist::AgreeOnSettings(comm, "trainer flags", flags, absl::Seconds(60));
    expected = "(checked by the script)";
  } else {
    s = ember::dist::AgreeOnSettings(comm, ember::dist::testing::ScenarioContext(name, r),
                                     ember::dist::testing::ScenarioSettings(name, r, n), absl::Seconds(60));
    expected = ember::dist::testing::ScenarioExpected(name, n);
  }
  const bool as_expected = name == "mpmd" ||
                           (expected.empty() ? s.ok()
                                             : s.code() == absl::StatusCode::kInvalidArgument &&
                                                   absl::StartsWith(s.message(), expected));
  absl::Status barrier = comm.Barrier(absl::Now() + absl::Seconds(60));
  std::printf("rank %d: agreement: %s\n", r, s.ToString().c_str());
  std::printf("rank %d: expected: %s\n", r, as_expected ? "yes" : "no");
  std::printf("rank %d: barrier: %s\n", r, barrier.ToString().c_str());
  std::fflush(stdout);
  // mpirun ends the job at the first non-zero exit: let every rank print first.
  if (!s.ok()) absl::SleepFor(absl::Seconds(2));
  created->reset();
  return s.ok() ? 0 : 1;
}
