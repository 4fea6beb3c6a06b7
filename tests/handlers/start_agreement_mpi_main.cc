// Runs under mpirun (2 and 4 ranks, inside bazel test; start_agreement_mpi_test.sh), MPMD-style:
// every rank runs `start_agreement_mpi CASE DIR [divergent]`, the last rank with "divergent".
//   engine_order   a trainer with EarlyStopping and a ModelCheckpoint at EPOCH_COMPLETED, in the
//                  other order on the divergent rank (issue 23, case 3)
//   engine_attach  the same, the checkpoint attached on the non-divergent ranks only (case 4)
//   engine_none    no synchronized handler at all on the divergent rank: it skips the start
//                  agreement and goes to its step; every rank fails within the deadline (10 s here),
//                  and the ranks in the agreement say that a rank without synchronized handlers
//                  skips it (review item a); the test runs it again under strict mode
//                  (EMBER_DISTRIBUTED_DEBUG=DETAIL), where every rank fails at once
//   engine_epochs  max_epochs 3 on the divergent rank, 2 elsewhere (case 6)
//   ddp_shape      DataParallel over Linear(4, 6) + Linear(6, 4), transposed on the divergent rank
//   save_on_rank   ModelCheckpoint with save_on_rank 1 on the divergent rank (case 7)
//   sharded        ShardedSource with another global_batch on the divergent rank (case 2)
//   metrics_order  an evaluator at EPOCH_COMPLETED with Metrics "a" then "b" (2 sums each), "b" then
//                  "a" on the divergent rank: without identity the all-reduce summed one metric's
//                  sums into the other's, silently (review item b)
//   es_order       two EarlyStopping handlers on scores "accuracy" and "loss", swapped on the
//                  divergent rank: with types alone in the layout each paired its score with the
//                  other's, silently (review item d)
//   filter_args    the ModelCheckpoint filtered Every(2), Every(3) on the divergent rank: the start
//                  agreement told only "filtered" (review item d)
//   score_fn       EarlyStopping with another score function (lambda) on the divergent rank: the
//                  layout said only that there was a score function (issue 23: score functions
//                  were not told apart)
//   filter_fn      the ModelCheckpoint filtered by another predicate on the divergent rank
//   same           nothing diverges: the trainer runs 2 epochs and saves
// Checkpoints go to DIR. Each rank prints "rank R: <status>" and exits 0 or 1.
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "distributed/mpi_communicator.h"
#include "tests/mpi/rank_main.h"
#include "engine/engine.h"
#include "handlers/checkpoint/model_checkpoint.h"
#include "handlers/early_stopping.h"
#include "handlers/metrics.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/parallel/sharded_source.h"

namespace {

struct Batch {
  torch::Tensor ids;
};

// A metric of a constant value: sums (value, 1) per iteration, the mean of them.
class Const final : public ember::Metric {
 public:
  explicit Const(double value) : value_(value) {}
  size_t num_sums() const override { return 2; }
  absl::Status Update(const ember::Engine&, absl::Span<double> sums) override {
    sums[0] += value_;
    sums[1] += 1;
    return absl::OkStatus();
  }
  double Compute(absl::Span<const double> sums) const override { return sums[0] / sums[1]; }

 private:
  double value_;
};

absl::Status Run(ember::dist::Communicator& comm, const std::string& kind, const std::string& dir, bool divergent) {
  const int a = kind == "ddp_shape" && divergent ? 6 : 4;
  const int b = kind == "ddp_shape" && divergent ? 4 : 6;
  torch::nn::Sequential net(torch::nn::Linear(a, b), torch::nn::Linear(b, a));
  // engine_none: every rank's deadline is 10 s (the agreement's on the others, the gradient
  // all-reduce's on the divergent rank); a missed deadline sends no failure notice (each rank
  // reports its own), so each fails by itself at 10 s and says where it waited.
  ember::DataParallel ddp(*net, {.deadline = absl::Seconds(kind == "engine_none" ? 10 : 60), .comm = &comm});
  EMBER_RETURN_IF_ERROR(ddp.status());
  EMBER_ASSIGN_OR_RETURN(
      auto source, ember::ShardedSource<Batch>::Create(
                       {.dataset_size = 64, .global_batch = kind == "sharded" && divergent ? 16 : 8, .seed = 1},
                       [](const torch::Tensor& ids) { return Batch{ids}; }, &comm));
  EMBER_ASSIGN_OR_RETURN(
      auto ckpt, ember::ModelCheckpoint::Create(
                     {.disk = {.dirname = dir},
                      .checkpoint = {.n_saved = 2, .save_on_rank = kind == "save_on_rank" && divergent ? 1 : 0}},
                     {{"model", net}}, &comm));
  torch::optim::SGD opt(net->parameters(), 0.1);
  ember::Engine trainer([&](ember::Engine&, const Batch& batch) -> absl::StatusOr<double> {
    opt.zero_grad();
    torch::Tensor x = batch.ids.to(torch::kFloat32).unsqueeze(1).expand({-1, 4}) / 64.0;
    torch::Tensor loss = net->forward(x).pow(2).mean();
    loss.backward();
    EMBER_RETURN_IF_ERROR(ddp.AllReduceGradients());
    opt.step();
    return loss.item<double>();
  });
  trainer.set_communicator(&comm);
  trainer.set_collective_timeout(absl::Seconds(kind == "engine_none" ? 10 : 60));
  EMBER_ASSIGN_OR_RETURN(auto es, ember::EarlyStopping::Create(
                                      {.patience = kind == "es_patience" && divergent ? 3 : 5,
                                       .score_function = [](const ember::Engine& e) {
                                         return static_cast<double>(e.state().epoch);
                                       }},
                                      trainer));
  ember::Engine evaluator([](ember::Engine&) -> absl::StatusOr<double> { return 0.0; });
  evaluator.set_communicator(&comm);
  evaluator.set_collective_timeout(absl::Seconds(60));
  ember::Metrics metrics;
  if (kind == "metrics_order" && divergent) {
    metrics.Add("b", Const(100)).Add("a", Const(1));
  } else {
    metrics.Add("a", Const(1)).Add("b", Const(100));
  }
  EMBER_RETURN_IF_ERROR(metrics.Attach(evaluator));
  trainer.On(ember::Events::EpochCompleted(), [&]() -> absl::Status {
    EMBER_RETURN_IF_ERROR(evaluator.Run({.max_epochs = 1, .epoch_length = 2}));
    const double a = evaluator.state().metrics.at("a");
    const double b = evaluator.state().metrics.at("b");
    if (a != 1 || b != 100) return absl::InternalError(absl::StrCat("metrics a=", a, " b=", b, ", expected 1 and 100"));
    return absl::OkStatus();
  });
  std::vector<std::unique_ptr<ember::EarlyStopping>> scored;
  if (kind == "es_order") {
    trainer.On(ember::Events::EpochCompleted(), [](ember::Engine& e) {
      e.state().metrics["accuracy"] = 0.5 + 0.1 * static_cast<double>(e.state().epoch);
      e.state().metrics["loss"] = 1.0 / static_cast<double>(e.state().epoch);
    });
    std::vector<std::string> names = {"accuracy", "loss"};
    if (divergent) std::swap(names[0], names[1]);
    for (const std::string& name : names) {
      EMBER_ASSIGN_OR_RETURN(auto h, ember::EarlyStopping::Create({.patience = 5, .score_name = name}, trainer));
      trainer.On(ember::Events::EpochCompleted(), *h);
      scored.push_back(std::move(h));
    }
    trainer.On(ember::Events::EpochCompleted(), *ckpt);
  } else if (kind == "score_fn") {
    std::function<double(const ember::Engine&)> by_epoch = [](const ember::Engine& e) {
      return static_cast<double>(e.state().epoch);
    };
    std::function<double(const ember::Engine&)> by_iteration = [](const ember::Engine& e) {
      return static_cast<double>(e.state().iteration);
    };
    EMBER_ASSIGN_OR_RETURN(auto h, ember::EarlyStopping::Create(
                                       {.patience = 5, .score_function = divergent ? by_iteration : by_epoch},
                                       trainer));
    trainer.On(ember::Events::EpochCompleted(), *h);
    scored.push_back(std::move(h));
    trainer.On(ember::Events::EpochCompleted(), *ckpt);
  } else if (kind == "filter_fn") {
    std::function<bool(const ember::Engine&, int64_t)> even = [](const ember::Engine&, int64_t epoch) {
      return epoch % 2 == 0;
    };
    std::function<bool(const ember::Engine&, int64_t)> odd = [](const ember::Engine&, int64_t epoch) {
      return epoch % 2 == 1;
    };
    trainer.On(ember::Events::EpochCompleted(), *es);
    trainer.On(ember::Events::EpochCompleted().When(divergent ? odd : even), *ckpt);
  } else if (kind == "filter_args") {
    trainer.On(ember::Events::EpochCompleted(), *es);
    trainer.On(ember::Events::EpochCompleted().Every(divergent ? 3 : 2), *ckpt);
  } else if (kind == "engine_order" && divergent) {
    trainer.On(ember::Events::EpochCompleted(), *ckpt);
    trainer.On(ember::Events::EpochCompleted(), *es);
  } else if (kind == "engine_none" && divergent) {
    // No synchronized handler at all on this rank.
  } else {
    trainer.On(ember::Events::EpochCompleted(), *es);
    if (!(kind == "engine_attach" && divergent)) trainer.On(ember::Events::EpochCompleted(), *ckpt);
  }
  EMBER_RETURN_IF_ERROR(trainer.Run(*source, {.max_epochs = kind == "engine_epochs" && divergent ? 3 : 2}));
  return ckpt->Flush(comm);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CASE DIR [divergent]\n", argv[0]);
    return 2;
  }
  ember::dist::Communicator& comm = ember::testing::MpiWorld();
  const absl::Status s = Run(comm, argv[1], argv[2], argc > 3 && std::string(argv[3]) == "divergent");
  std::printf("rank %d: %s\n", comm.rank(), s.ToString().c_str());
  return ember::testing::ExitLettingOthersReport(s.ok() ? 0 : 1);
}
