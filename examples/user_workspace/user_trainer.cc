// user_trainer.cc: a distributed trainer of your own on Ember, from your own Bazel workspace.
//   bazel run --run_under="mpirun -np 2" //:user_trainer -- /tmp/run   (or one process)
#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <vector>

#include "distributed/launch.h"
#include "engine/engine.h"
#include "handlers/checkpoint.h"
#include "handlers/data_parallel.h"
#include "handlers/early_stopping.h"
#include "handlers/metrics.h"
#include "handlers/terminate_on_nan.h"
#include "handlers/timer.h"

struct Batch {
  torch::Tensor x, y;
};

// This rank's batches of a seeded 4-class problem: samples [from, to) of 4096, 32 per batch.
std::vector<Batch> Shard(int rank, int world, int64_t from, int64_t to) {
  torch::manual_seed(7);
  torch::Tensor x = torch::randn({4096, 16}), y = x.matmul(torch::randn({16, 4})).argmax(1);
  std::vector<Batch> out;
  for (int64_t at = from + rank * 32; at + 32 <= to; at += 32 * world) {
    out.push_back({x.slice(0, at, at + 32), y.slice(0, at, at + 32)});
  }
  return out;
}

int main(int argc, char** argv) {
  auto world = ember::dist::LaunchWorld().value();  // the default for every engine and handler
  const int rank = world->rank(), size = world->world_size();
  std::vector<Batch> train = Shard(rank, size, 0, 3072), val = Shard(rank, size, 3072, 4096);
  torch::nn::Sequential model(torch::nn::Linear(16, 64), torch::nn::ReLU(), torch::nn::Linear(64, 4));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  ember::DataParallel ddp(*model);  // rank 0's weights everywhere; gradients averaged

  ember::Engine trainer([&](ember::Engine&, const Batch& b) -> absl::StatusOr<double> {
    optimizer.zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(b.x), b.y);
    loss.backward();
    if (absl::Status s = ddp.AllReduceGradients(); !s.ok()) return s;
    optimizer.step();
    return loss.item<double>();
  });
  ember::Engine evaluator([&](ember::Engine&, const Batch& b) {
    torch::NoGradGuard no_grad;
    return ember::Prediction{model->forward(b.x), b.y};
  });
  ember::Metrics metrics;  // every rank's sums, all-reduced in one collective
  metrics.Add("accuracy", ember::Accuracy());
  absl::Status status = metrics.Attach(evaluator);
  trainer.On(ember::Events::EpochCompleted(), [&] { return evaluator.Run(val); });

  auto es = ember::EarlyStopping::Create({.patience = 3, .score_name = "accuracy"}, trainer).value();
  auto checkpoint = ember::CreateModelCheckpoint(
      {.dirname = argc > 1 ? argv[1] : "runs/user", .score_name = "accuracy", .n_saved = 2, .keep_last = 1,
       .require_empty = false, .global_step_transform = ember::GlobalStepFromEngine(trainer)},
      {{"model", *model}, {"optimizer", optimizer}, {"trainer", trainer}, {"early_stopping", *es}}).value();
  evaluator.On(ember::Events::Completed(), *es);
  evaluator.On(ember::Events::Completed(), *checkpoint);
  trainer.On(ember::Events::IterationCompleted(), ember::TerminateOnNan());
  ember::Timer timer(/*average=*/true);
  if (status.ok()) status = timer.Attach(trainer, {.start = ember::Events::EpochStarted(),
                                                   .pause = ember::Events::IterationCompleted(),
                                                   .resume = ember::Events::IterationStarted(),
                                                   .step = ember::Events::IterationCompleted()});

  auto resumed = checkpoint->ResumeLatest(world->communicator());  // newest valid, or a fresh start
  if (status.ok()) status = resumed.status();
  if (status.ok()) status = trainer.Run(train, {.max_epochs = argc > 2 ? std::stoi(argv[2]) : 4});
  const ember::Engine::RunOutcome& how = trainer.outcome();
  std::printf("rank %d/%d: %s%s at epoch %lld, accuracy %.4f, best %s, %.2f ms/iteration%s%s\n", rank, size,
              how.completed() ? "completed" : how.terminated() ? "terminated by " : "failed",
              how.terminated_by.c_str(), static_cast<long long>(how.epoch),
              checkpoint->best_score().value_or(0), checkpoint->last_checkpoint().value_or("none").c_str(),
              1e3 * timer.value(), status.ok() ? "" : ": ", std::string(status.message()).c_str());
  return status.ok() ? 0 : 1;
}
