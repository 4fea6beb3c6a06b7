#include "tests/mpi/rank_main.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "distributed/mpi_communicator.h"
#include "gtest/gtest.h"

namespace ember::testing {

dist::Communicator& MpiWorld() {
  // Destroyed at exit, after main returns: the destructor sends this rank's pending failure
  // notices and calls MPI_Finalize (which mpirun expects of every rank that exits 0).
  static const std::unique_ptr<dist::MpiCommunicator> world = [] {
    absl::StatusOr<std::unique_ptr<dist::MpiCommunicator>> created =
        dist::MpiCommunicator::Create(absl::Seconds(60));
    if (!created.ok()) {
      std::fprintf(stderr, "MPI: %s\n", created.status().ToString().c_str());
      std::exit(2);
    }
    return *std::move(created);
  }();
  return *world;
}

int RunTestsOnEveryRank(
    int argc, char** argv,
    const std::function<std::optional<int>(dist::Communicator&, int argc, char** argv)>& mode) {
  torch::set_num_threads(1);
  dist::Communicator& comm = MpiWorld();
  if (mode) {
    if (const std::optional<int> code = mode(comm, argc, argv)) return *code;
  }
  ::testing::InitGoogleTest(&argc, argv);
  const int failed = RUN_ALL_TESTS();
  std::fprintf(stderr, "rank %d of %d: %s\n", comm.rank(), comm.world_size(),
               failed ? "FAILED" : "PASSED");
  std::fflush(stderr);
  return ExitLettingOthersReport(failed);
}

int ExitLettingOthersReport(int code, absl::Duration linger) {
  std::fflush(stdout);
  std::fflush(stderr);
  if (code != 0) absl::SleepFor(linger);
  return code;
}

absl::Status SameOnEveryRank(dist::Communicator& comm, absl::Span<const double> mine,
                             const std::string& what) {
  // The lengths first: ranks that pass different lengths are named, not mismatched in the gather.
  double length = static_cast<double>(mine.size());
  std::vector<double> lengths(static_cast<size_t>(comm.world_size()));
  if (absl::Status s = comm.AllGather(absl::MakeConstSpan(&length, 1), absl::MakeSpan(lengths),
                                      absl::Now() + absl::Seconds(60));
      !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("comparing ", what, " across ranks: ", s.message()));
  }
  for (int r = 0; r < comm.world_size(); ++r) {
    if (lengths[static_cast<size_t>(r)] != length) {
      return absl::InternalError(absl::StrCat(what, " differs in length between rank ", r, " (",
                                              lengths[static_cast<size_t>(r)], ") and rank ",
                                              comm.rank(), " (", mine.size(), ")"));
    }
  }
  std::vector<double> all(mine.size() * static_cast<size_t>(comm.world_size()));
  if (absl::Status s = comm.AllGather(mine, absl::MakeSpan(all), absl::Now() + absl::Seconds(60));
      !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("comparing ", what, " across ranks: ", s.message()));
  }
  for (int r = 0; r < comm.world_size(); ++r) {
    const double* theirs = all.data() + static_cast<size_t>(r) * mine.size();
    for (size_t i = 0; i < mine.size(); ++i) {
      if (std::memcmp(&theirs[i], &mine[i], sizeof(double)) != 0) {
        return absl::InternalError(absl::StrCat(what, " differs between rank ", r, " and rank ",
                                                comm.rank(), " at index ", i, ": ", theirs[i],
                                                " vs ", mine[i]));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status SameOnEveryRank(dist::Communicator& comm, const std::vector<torch::Tensor>& tensors,
                             const std::string& what) {
  std::vector<double> values;
  for (const torch::Tensor& t : tensors) {
    const torch::Tensor d = t.detach().to(torch::kCPU, torch::kFloat64).contiguous().reshape(-1);
    values.insert(values.end(), d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
  }
  return SameOnEveryRank(comm, values, what);
}

}  // namespace ember::testing
