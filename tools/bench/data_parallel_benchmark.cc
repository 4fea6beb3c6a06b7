// DataParallel step time under mpirun (issue 15's CPU figures):
//   mpirun -np 2 bazel-bin/tools/bench/data_parallel_benchmark [--steps=30] [--repetitions=3]
// For two models, the trainer's default MLP (784-256-128-10, 0.9 MiB of gradients) and a wide
// one (784-2048-2048-10, 24 MiB), with the trainer's per-rank batch of 64: the time of one
// training step (forward, backward, gradient averaging, SGD) with overlap (buckets started by
// backward's hooks), without overlap (every bucket reduced after backward), and with no
// communication at all (each rank alone: the one-rank step of the same per-rank batch). Every
// step runs in an Engine with TerminateOnNan and Preemption; their per-iteration agreement rides
// in the last gradient bucket, except in "overlap-agreement-apart" (a collective of its own, as
// before issue 15's item 3), so collectives_per_step shows what a step costs. Prints,
// from rank 0, one JSON line per (model, mode) with the minimum, median and maximum over the
// repetitions of the mean step time, and the collectives per step.
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/mpi_communicator.h"
#include "distributed/single_process_communicator.h"
#include "engine/engine.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/preemption.h"
#include "handlers/terminate_on_nan.h"

namespace {

int Flag(int argc, char** argv, const std::string& name, int fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]).rfind(prefix, 0) == 0) return std::atoi(argv[i] + prefix.size());
  }
  return fallback;
}

torch::nn::Sequential Mlp(int64_t hidden1, int64_t hidden2) {
  return torch::nn::Sequential(torch::nn::Linear(784, hidden1), torch::nn::ReLU(), torch::nn::Linear(hidden1, hidden2),
                               torch::nn::ReLU(), torch::nn::Linear(hidden2, 10));
}

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  const int steps = Flag(argc, argv, "steps", 30);
  const int repetitions = Flag(argc, argv, "repetitions", 3);
  auto comm_or = ember::dist::MpiCommunicator::Create(absl::Seconds(60));
  if (!comm_or.ok()) {
    std::fprintf(stderr, "MPI: %s\n", comm_or.status().ToString().c_str());
    return 1;
  }
  ember::dist::Communicator& comm = **comm_or;
  ember::Preemption preemption;  // one per process
  struct Model {
    const char* name;
    int64_t h1, h2;
  };
  ember::dist::SingleProcessCommunicator alone;
  for (const Model& m : {Model{"mlp-256-128", 256, 128}, Model{"mlp-2048-2048", 2048, 2048}}) {
    for (const std::string mode : {"overlap", "overlap-agreement-apart", "no-overlap", "no-communication"}) {
      torch::manual_seed(0);
      torch::nn::Sequential net = Mlp(m.h1, m.h2);
      int64_t grad_bytes = 0;
      for (const auto& p : net->parameters()) grad_bytes += p.numel() * p.element_size();
      std::unique_ptr<ember::DataParallel> ddp;
      if (mode != "no-communication") {
        ddp = std::make_unique<ember::DataParallel>(
            *net, ember::DataParallelOptions{.bucket_bytes = int64_t{1} << 20, .comm = &comm, .overlap = mode != "no-overlap"});
        if (!ddp->status().ok()) return 1;
      }
      const bool carry = mode != "overlap-agreement-apart";
      torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
      torch::manual_seed(comm.rank() + 1);
      const torch::Tensor x = torch::randn({64, 784});
      const torch::Tensor y = torch::randint(0, 10, {64});
      // The trainer's step, in an Engine with the per-iteration agreement of TerminateOnNan and
      // Preemption: carried in the last bucket, or in a collective of its own.
      ember::Engine trainer([&](ember::Engine& e) -> absl::StatusOr<double> {
        opt.zero_grad();
        torch::Tensor loss = torch::nn::functional::cross_entropy(net->forward(x), y);
        loss.backward();
        const double out = loss.item<double>();
        if (ddp != nullptr) {
          absl::Status s = carry ? ddp->AllReduceGradients(e, out) : ddp->AllReduceGradients();
          if (!s.ok()) return s;
        }
        opt.step();
        return out;
      });
      trainer.set_communicator(ddp != nullptr ? &comm : &alone);
      trainer.set_collective_timeout(absl::Seconds(60));
      ember::TerminateOnNan ton;
      trainer.On(ember::Events::IterationCompleted(), ton);
      trainer.On(ember::Events::IterationCompleted(), preemption);
      if (absl::Status s = trainer.Run({.max_epochs = 1, .epoch_length = steps}); !s.ok()) {  // warm-up
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        return 1;
      }
      std::vector<double> ms;
      int64_t collectives = 0;
      for (int rep = 0; rep < repetitions; ++rep) {
        if (!comm.Barrier(absl::Now() + absl::Seconds(60)).ok()) return 1;
        const int64_t c0 = comm.collectives();
        const absl::Time t0 = absl::Now();
        if (absl::Status s = trainer.Run({.max_epochs = 1, .epoch_length = steps}); !s.ok()) {
          std::fprintf(stderr, "%s\n", s.ToString().c_str());
          return 1;
        }
        ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0) / steps);
        collectives = comm.collectives() - c0;
      }
      std::sort(ms.begin(), ms.end());
      if (comm.rank() == 0) {
        std::printf(
            "{\"model\": \"%s\", \"gradient_MiB\": %.1f, \"mode\": \"%s\", \"ranks\": %d, \"per_rank_batch\": 64, "
            "\"step_ms\": {\"min\": %.2f, \"median\": %.2f, \"max\": %.2f}, \"buckets\": %zu, "
            "\"collectives_per_step\": %.2f, \"buckets_started_during_backward_per_step\": %.2f}\n",
            m.name, grad_bytes / 1048576.0, mode.c_str(), comm.world_size(), ms.front(), ms[ms.size() / 2], ms.back(),
            ddp ? ddp->num_buckets() : 0, static_cast<double>(collectives) / steps,
            ddp ? static_cast<double>(ddp->buckets_started_early()) / (steps * (repetitions + 1)) : 0.0);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
