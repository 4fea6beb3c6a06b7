// Runs under mpirun (2 ranks, inside bazel test; ema_handler_mpi_test.sh): every rank trains the
// same small model with DataParallel on data of its own (different seeds per rank, and a
// different initialisation that DataParallel's broadcast replaces), with an EMAHandler (warm-up
// on, every iteration) created after DataParallel, for 2 epochs of 5 iterations.
//   ema_handler_mpi                       checks, through the communicator, that every rank's EMA
//                                         parameters are bitwise equal (each value's MIN and MAX
//                                         over the ranks are the same bits), that the ranks'
//                                         data differed, and that the EMA is not the online model
//   ema_handler_mpi ema_before_broadcast  the EMAHandler created before DataParallel: each rank's
//                                         EMA starts from its own initialisation (the script
//                                         checks that the digests then differ: the check can fail)
// Each rank prints "rank R ema digest D" (FNV-1a of the EMA parameters' bytes), then
// "rank R of N: PASSED" or "rank R: FAILED: <why>".
#include <torch/torch.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/mpi_communicator.h"
#include "engine/engine.h"
#include "handlers/ema_handler.h"
#include "handlers/parallel/data_parallel.h"
#include "tests/mpi/rank_main.h"

namespace {

using ember::testing::SameOnEveryRank;

uint64_t Digest(const std::vector<torch::Tensor>& tensors) {
  uint64_t h = 1469598103934665603ull;
  for (const torch::Tensor& t : tensors) {
    const torch::Tensor c = t.contiguous();
    const auto* p = static_cast<const unsigned char*>(c.data_ptr());
    for (size_t i = 0; i < static_cast<size_t>(c.numel()) * c.element_size(); ++i) {
      h = (h ^ p[i]) * 1099511628211ull;
    }
  }
  return h;
}

int Run(ember::dist::Communicator& comm, bool ema_before_broadcast) {
  const int r = comm.rank(), n = comm.world_size();
  torch::manual_seed(1000 + r);  // every rank initialises differently
  torch::nn::Sequential model(torch::nn::Linear(16, 32), torch::nn::ReLU(), torch::nn::Linear(32, 4));
  const ember::EMAHandlerOptions ema_options{.momentum = 0.05, .momentum_warmup = 0.5, .warmup_iters = 4};
  absl::StatusOr<std::unique_ptr<ember::EMAHandler>> ema;
  if (ema_before_broadcast) ema = ember::EMAHandler::Create(model, ema_options);
  ember::DataParallel ddp(*model, {.bucket_bytes = 1024, .comm = &comm});
  if (!ddp.status().ok()) return std::fprintf(stderr, "rank %d: FAILED: %s\n", r, ddp.status().ToString().c_str()), 1;
  if (!ema_before_broadcast) ema = ember::EMAHandler::Create(model, ema_options);  // the documented order
  if (!ema.ok()) return std::fprintf(stderr, "rank %d: FAILED: %s\n", r, ema.status().ToString().c_str()), 1;
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  double first_loss = 0;
  ember::Engine trainer([&](ember::Engine& e) -> absl::StatusOr<double> {
    torch::manual_seed(50 + 1000 * r + e.state().iteration);  // this rank's own data
    const torch::Tensor x = torch::randn({8, 16});
    const torch::Tensor y = torch::randint(0, 4, {8});
    optimizer.zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    loss.backward();
    if (absl::Status s = ddp.AllReduceGradients(); !s.ok()) return s;
    optimizer.step();
    if (e.state().iteration == 1) first_loss = loss.item<double>();
    return loss.item<double>();
  });
  trainer.set_communicator(&comm);
  if (absl::Status s = (*ema)->Attach(trainer); !s.ok()) {
    return std::fprintf(stderr, "rank %d: FAILED: %s\n", r, s.ToString().c_str()), 1;
  }
  if (absl::Status s = trainer.Run({.max_epochs = 2, .epoch_length = 5}); !s.ok()) {
    return std::fprintf(stderr, "rank %d: FAILED: %s\n", r, s.ToString().c_str()), 1;
  }
  const std::vector<torch::Tensor> ema_params = (*ema)->ema_model().parameters();
  std::fprintf(stderr, "rank %d ema digest %016" PRIx64 "\n", r, Digest(ema_params));
  std::fflush(stderr);
  if (ema_before_broadcast) return 0;  // the script compares the digests

  for (const absl::Status& same : {SameOnEveryRank(comm, ema_params, "the EMA parameters"),
                                   SameOnEveryRank(comm, model->parameters(), "the online parameters")}) {
    if (!same.ok()) return std::fprintf(stderr, "rank %d: FAILED: %s\n", r, same.ToString().c_str()), 1;
  }
  // The ranks' data differed: their first local losses are not all the same.
  if (n > 1 && SameOnEveryRank(comm, {torch::tensor(first_loss, torch::kFloat64)}, "the first loss").ok()) {
    return std::fprintf(stderr, "rank %d: FAILED: every rank saw the same data\n", r), 1;
  }
  if (Digest(ema_params) == Digest(model->parameters())) {
    return std::fprintf(stderr, "rank %d: FAILED: the EMA equals the online model\n", r), 1;
  }
  std::fprintf(stderr, "rank %d of %d: PASSED\n", r, n);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  const bool before = argc == 2 && std::string(argv[1]) == "ema_before_broadcast";
  return ember::testing::ExitLettingOthersReport(Run(ember::testing::MpiWorld(), before));
}
