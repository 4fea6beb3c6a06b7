// The latency of one agreement (an all-reduce of 4 doubles, as the per-event consensus sends) and
// of one gradient bucket (an all-reduce of 50858 floats, the MLP trainer's gradients) on the
// backend that Launch picks: MPI under mpirun, Gloo under torchrun. tools/bench/gloo_vs_mpi.sh
// runs both side by side.
//   mpirun --oversubscribe -np 2 bazel-bin/tools/bench/backend_latency
//   torchrun --nproc_per_node=2 --no_python bazel-bin/tools/bench/backend_latency
// Rank 0 prints one JSON line per measurement (median of 5 repetitions, microseconds per call).
#include <algorithm>
#include <cstdio>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/launch.h"

namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main() {
  absl::StatusOr<std::unique_ptr<ember::dist::World>> world = ember::dist::LaunchWorld();
  if (!world.ok()) {
    std::fprintf(stderr, "%s\n", world.status().ToString().c_str());
    return 1;
  }
  ember::dist::Communicator& comm = (*world)->communicator();
  struct Case {
    const char* name;
    size_t count;
    int iterations;
  };
  for (const Case& c : {Case{"agreement_4_float64", 4, 2000}, Case{"bucket_50858_float32", 50858, 200}}) {
    std::vector<double> reps;
    std::vector<double> d(c.count, 1.0);
    std::vector<float> f(c.count, 1.0f);
    for (int rep = 0; rep < 5; ++rep) {
      const absl::Time start = absl::Now();
      for (int i = 0; i < c.iterations; ++i) {
        const absl::Time deadline = absl::Now() + absl::Seconds(60);
        absl::Status s = c.count == 4 ? comm.AllReduce(absl::MakeSpan(d), ember::dist::ReduceOp::kSum, deadline)
                                      : comm.AllReduce(ember::dist::Buffer::Host(f.data(), f.size()),
                                                       ember::dist::ReduceOp::kSum, deadline);
        if (!s.ok()) {
          std::fprintf(stderr, "%s\n", s.ToString().c_str());
          return 1;
        }
        std::fill(d.begin(), d.end(), 1.0);
        std::fill(f.begin(), f.end(), 1.0f);
      }
      reps.push_back(absl::ToDoubleMicroseconds(absl::Now() - start) / c.iterations);
    }
    if (comm.rank() == 0) {
      std::printf("{\"backend\": \"%s\", \"world_size\": %d, \"case\": \"%s\", \"us_per_call\": %.2f}\n",
                  comm.backend().c_str(), comm.world_size(), c.name, Median(reps));
      std::fflush(stdout);
    }
  }
  return (*world)->Shutdown().ok() ? 0 : 1;
}
