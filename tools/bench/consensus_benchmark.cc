// The cost of one synchronized event firing against a bare MPI_Allreduce of the same bytes, in
// the same run. Run it under mpirun:
//   bazel build -c opt //tools/bench:consensus_benchmark
//   mpirun --oversubscribe -np 2 bazel-bin/tools/bench/consensus_benchmark
// Rank 0 prints one JSON line per measurement (median of 5 repetitions, microseconds), strict
// mode's firing (EMBER_DISTRIBUTED_DEBUG=DETAIL) beside the default one.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/mpi_communicator.h"
#include "engine/engine.h"
#include "engine/synchronized_handler.h"

namespace {

constexpr int kIterations = 20000;
constexpr int kRepeats = 5;

// A synchronized handler proposing one value (as EarlyStopping or TerminateOnNan do).
class OneValue : public ember::SynchronizedHandler {
 public:
  explicit OneValue(ember::dist::Reduction r) : r_(r) {}
  size_t num_values() const override { return 1; }
  ember::dist::Reduction reduction(size_t) const override { return r_; }
  absl::Status Propose(ember::Engine& e, absl::Span<double> v) override {
    v[0] = static_cast<double>(e.state().iteration % 7);
    return absl::OkStatus();
  }
  absl::Status Decide(ember::Engine&, const ember::Agreement& a) override {
    sink_ += a.value(0);
    return absl::OkStatus();
  }
  double sink_ = 0;

 private:
  ember::dist::Reduction r_;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
double TimeUs(F body) {
  std::vector<double> runs;
  for (int rep = 0; rep < kRepeats; ++rep) {
    MPI_Barrier(MPI_COMM_WORLD);
    const absl::Time start = absl::Now();
    body();
    runs.push_back(absl::ToDoubleMicroseconds(absl::Now() - start) / kIterations);
  }
  return Median(runs);
}

}  // namespace

int main() {
  auto comm = ember::dist::MpiCommunicator::Create();
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", comm.status().ToString().c_str());
    return 1;
  }
  const int rank = (*comm)->rank();
  const int world = (*comm)->world_size();
  auto report = [&](const std::string& what, double us, double extra = -1) {
    if (rank != 0) return;
    std::printf("{\"world_size\": %d, \"measure\": \"%s\", \"us\": %.3f", world, what.c_str(), us);
    if (extra >= 0) std::printf(", \"collectives_per_firing\": %.3f", extra);
    std::printf("}\n");
    std::fflush(stdout);
  };
  for (int n : {1, 4}) {
    std::vector<double> buf(n, 1.0), all(n * world);
    report("bare MPI_Allreduce of " + std::to_string(n) + " doubles", TimeUs([&] {
             for (int i = 0; i < kIterations; ++i) {
               MPI_Allreduce(MPI_IN_PLACE, buf.data(), n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
             }
           }));
    report("bare MPI_Allgather of " + std::to_string(n) + " doubles", TimeUs([&] {
             for (int i = 0; i < kIterations; ++i) {
               MPI_Allgather(buf.data(), n, MPI_DOUBLE, all.data(), n, MPI_DOUBLE, MPI_COMM_WORLD);
             }
           }));
    report("bare MPI_Iallgather + MPI_Test polling of " + std::to_string(n) + " doubles", TimeUs([&] {
             for (int i = 0; i < kIterations; ++i) {
               MPI_Request req;
               MPI_Iallgather(buf.data(), n, MPI_DOUBLE, all.data(), n, MPI_DOUBLE, MPI_COMM_WORLD, &req);
               int done = 0;
               while (!done) MPI_Test(&req, &done, MPI_STATUS_IGNORE);
             }
           }));
    std::vector<int> data(kIterations, 0);
    ember::Engine bare([](ember::Engine&, const int&) {});
    bare.set_communicator(comm->get());
    const double bare_us = TimeUs([&] {
      bare.state().max_epochs.reset();
      (void)bare.Run(data);
    });
    ember::Engine engine([](ember::Engine&, const int&) {});
    engine.set_communicator(comm->get());
    std::vector<std::unique_ptr<OneValue>> handlers;
    for (int h = 0; h < n; ++h) {
      handlers.push_back(std::make_unique<OneValue>(h % 2 ? ember::dist::Reduction::kMax : ember::dist::Reduction::kMean));
      engine.On(ember::Events::IterationCompleted(), *handlers.back());
    }
    const int64_t before = (*comm)->collectives();
    const double synced_us = TimeUs([&] {
      engine.state().max_epochs.reset();
      absl::Status s = engine.Run(data);
      if (!s.ok()) std::abort();
    });
    const double per_firing = static_cast<double>((*comm)->collectives() - before) / (kIterations * kRepeats);
    report("engine firing with " + std::to_string(n) + " synchronized handler(s), minus the bare engine",
           synced_us - bare_us, per_firing);
    // Strict mode (EMBER_DISTRIBUTED_DEBUG=DETAIL, communicator.h): the same firings, each
    // preceded by the all-gather of its collective's fingerprint.
    (*comm)->set_strict(true);
    const int64_t strict_before = (*comm)->collectives();
    const double strict_us = TimeUs([&] {
      engine.state().max_epochs.reset();
      absl::Status s = engine.Run(data);
      if (!s.ok()) std::abort();
    });
    (*comm)->set_strict(false);
    report("engine firing with " + std::to_string(n) +
               " synchronized handler(s) in strict mode (EMBER_DISTRIBUTED_DEBUG=DETAIL), minus the bare engine",
           strict_us - bare_us,
           static_cast<double>((*comm)->collectives() - strict_before) / (kIterations * kRepeats));
  }
  // What the agreement's identity costs (consensus.h): a firing exchanges a fixed
  // kAgreementSlots doubles per rank (header and values) instead of n; the same non-blocking call
  // on that many doubles, against the 4 doubles above.
  {
    const int slots = static_cast<int>(ember::dist::kAgreementSlots);
    std::vector<double> buf(slots, 1.0), all(static_cast<size_t>(slots) * world);
    report("bare MPI_Iallgather + MPI_Test polling of " + std::to_string(slots) + " doubles (an agreement with its identity)",
           TimeUs([&] {
             for (int i = 0; i < kIterations; ++i) {
               MPI_Request req;
               MPI_Iallgather(buf.data(), slots, MPI_DOUBLE, all.data(), slots, MPI_DOUBLE, MPI_COMM_WORLD, &req);
               int done = 0;
               while (!done) MPI_Test(&req, &done, MPI_STATUS_IGNORE);
             }
           }));
  }
  return 0;
}
