// File: tests/mpi/rank_main.h
//
// What the mpirun test programs (the *_mpi binaries that tests/mpi/mpi.bzl runs on 2 and 4 ranks)
// share: the process's MPI communicator, a gtest main that reports every rank's verdict, the exit
// that lets the other ranks report first, and the bitwise same-on-every-rank check.
#ifndef EMBER_TESTS_MPI_RANK_MAIN_H_
#define EMBER_TESTS_MPI_RANK_MAIN_H_

#include <torch/torch.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "distributed/communicator.h"

namespace ember::testing {

// The MPI communicator of this process (60 s default deadline), created on the first call and
// destroyed (MPI finalized) at exit; if MPI cannot start, prints why and exits with status 2.
dist::Communicator& MpiWorld();

// The main of a gtest mpirun program: one torch thread per rank, the communicator, then `mode`
// (a program's non-gtest modes, e.g. "stall 1"): when it returns a status, that is the exit code;
// otherwise every test runs on every rank, which prints "rank R of N: PASSED|FAILED".
int RunTestsOnEveryRank(
    int argc, char** argv,
    const std::function<std::optional<int>(dist::Communicator&, int argc, char** argv)>& mode = nullptr);

// `code`, after lingering `linger` when it is non-zero: mpirun ends the job at the first non-zero
// exit, so a rank that failed first would otherwise kill the others before they report.
int ExitLettingOthersReport(int code, absl::Duration linger = absl::Seconds(2));

// OK when every rank's `mine` is bitwise equal to this rank's (an all-gather within 60 s);
// otherwise an error naming `what`, the first differing rank and index, and both values.
absl::Status SameOnEveryRank(dist::Communicator& comm, absl::Span<const double> mine,
                             const std::string& what);

// The same for tensors, compared as float64 (exact for float32, bfloat16 and float16 values).
absl::Status SameOnEveryRank(dist::Communicator& comm, const std::vector<torch::Tensor>& tensors,
                             const std::string& what);

}  // namespace ember::testing

#endif  // EMBER_TESTS_MPI_RANK_MAIN_H_
