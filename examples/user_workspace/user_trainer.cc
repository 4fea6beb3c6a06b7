// user_trainer.cc: a distributed trainer of your own on Ember, from your own Bazel workspace.
//   bazel run --run_under="mpirun -np 2" //:user_trainer -- /tmp/run   (or one process)
#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <vector>

#include "base/status_macros.h"
#include "distributed/launch.h"
#include "engine/engine.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/parallel/supervised_step.h"
#include "handlers/early_stopping.h"
#include "handlers/checkpoint/global_step.h"
#include "handlers/metrics.h"
#include "handlers/param_scheduler.h"
#include "handlers/checkpoint/model_checkpoint.h"
#include "handlers/parallel/sharded_source.h"
#include "handlers/terminate_on_nan.h"
#include "handlers/timer.h"

struct Batch { torch::Tensor x, y; };  // NOLINT: one line

absl::Status Train(const std::string& dir, int max_epochs) {
  EMBER_ASSIGN_OR_RETURN(auto world, ember::dist::LaunchWorld());  // the default for engines and handlers
  torch::manual_seed(7);  // a seeded 4-class problem: samples [0, 3072) to train on, [3072, 4096) held out
  torch::Tensor x = torch::randn({4096, 16}), y = x.matmul(torch::randn({16, 4})).argmax(1);
  auto batch = [&](const torch::Tensor& ids) { return Batch{x.index_select(0, ids), y.index_select(0, ids)}; };
  EMBER_ASSIGN_OR_RETURN(auto train, ember::ShardedSource<Batch>::Create({.dataset_size = 3072, .global_batch = 64}, batch));
  const int rank = world->rank(), size = world->world_size();
  std::vector<Batch> val = {batch(torch::arange(3072 + 1024 * rank / size, 3072 + 1024 * (rank + 1) / size))};
  torch::nn::Sequential model(torch::nn::Linear(16, 64), torch::nn::ReLU(), torch::nn::Linear(64, 4));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  ember::DataParallel ddp(*model);  // rank 0's weights everywhere; gradients averaged
  // ignite's supervised update; TerminateOnNan's agreement rides in the gradient all-reduce, and the
  // averaged gradients are clipped to norm 1 (the same factor on every rank).
  EMBER_ASSIGN_OR_RETURN(auto step, ember::SupervisedStep::Create(
      [&](const torch::Tensor& in) { return model->forward(in); }, optimizer,
      [](const torch::Tensor& p, const torch::Tensor& t) { return torch::nn::functional::cross_entropy(p, t); },
      {.clip_grad_norm = 1.0, .data_parallel = &ddp}));
  ember::Engine trainer([&](ember::Engine& e, const Batch& b) { return (*step)(e, b.x, b.y); });
  // The learning rate: a cosine from 0.05 to 0.005 over each epoch (48 iterations), saved and resumed.
  EMBER_ASSIGN_OR_RETURN(auto lr, ember::CosineAnnealingScheduler::Create(
      optimizer, {.param_name = "lr", .start_value = 0.05, .end_value = 0.005, .cycle_size = 48}));
  trainer.On(ember::Events::IterationStarted(), *lr);
  ember::Engine evaluator([&](ember::Engine&, const Batch& b) { return ember::Prediction{model->forward(b.x), b.y}; });
  ember::Metrics metrics;  // every rank's sums, all-reduced in one collective
  EMBER_RETURN_IF_ERROR(metrics.Add("accuracy", ember::Accuracy()).Attach(evaluator));
  trainer.On(ember::Events::EpochCompleted(), [&] { return evaluator.Run(val); });

  EMBER_ASSIGN_OR_RETURN(auto es, ember::EarlyStopping::Create({.patience = 3, .score_name = "accuracy"}, trainer));
  EMBER_ASSIGN_OR_RETURN(auto checkpoint, ember::ModelCheckpoint::Create(
      {.disk = {.dirname = dir, .require_empty = false},
       .checkpoint = {.score_name = "accuracy", .n_saved = 2, .keep_last = 1,
                      .global_step_transform = ember::GlobalStepFromEngine(trainer)}},
      {{"model", *model}, {"optimizer", optimizer}, {"trainer", trainer}, {"early_stopping", *es}, {"data", *train},
       {"lr_scheduler", *lr}}));
  evaluator.On(ember::Events::Completed(), *es);
  evaluator.On(ember::Events::Completed(), *checkpoint);
  trainer.On(ember::Events::IterationCompleted(), ember::TerminateOnNan());
  ember::Timer timer(/*average=*/true);
  EMBER_RETURN_IF_ERROR(timer.Attach(trainer, {.start = ember::Events::EpochStarted(), .pause = ember::Events::IterationCompleted(),
                                               .resume = ember::Events::IterationStarted(), .step = ember::Events::IterationCompleted()}));

  EMBER_RETURN_IF_ERROR(checkpoint->ResumeLatest().status());  // the newest valid checkpoint, or a fresh start
  absl::Status status = trainer.Run(*train, {.max_epochs = max_epochs});
  std::printf("rank %d/%d: %s, accuracy %.4f, best %s, %.2f ms/iteration\n", rank, size,
              trainer.outcome().Summary().c_str(), checkpoint->best_score().value_or(0),
              checkpoint->last_checkpoint().value_or("none").c_str(), 1e3 * timer.value());
  return status;
}

int main(int argc, char** argv) {
  absl::Status status = Train(argc > 1 ? argv[1] : "runs/user", argc > 2 ? std::stoi(argv[2]) : 4);
  if (!status.ok()) std::fprintf(stderr, "user_trainer: %s\n", std::string(status.message()).c_str());
  return status.ok() ? 0 : 1;
}
