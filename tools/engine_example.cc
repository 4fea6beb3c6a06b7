// engine_example: trains a small LibTorch MLP on a seeded synthetic classification problem with
// the Engine, an evaluator engine run at every EPOCH_COMPLETED, a NaN guard and progress lines.
// It is the main job until //tools:train (the distributed trainer) exists.
//
//   bazel run //tools:engine_example -- --epochs=5 --batch_size=64 --lr=0.1
//
// Prints one line per epoch and a final JSON line {"epoch", "iteration", "val_accuracy", ...}.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "engine/engine.h"

ABSL_FLAG(int, epochs, 5, "number of epochs (>= 1)");
ABSL_FLAG(int, batch_size, 64, "samples per batch (>= 1)");
ABSL_FLAG(double, lr, 0.1, "SGD learning rate (> 0)");
ABSL_FLAG(int, samples, 8192, "training samples (>= batch_size); validation gets a quarter");
ABSL_FLAG(int64_t, seed, 0, "random seed");

namespace {

struct Batch {
  torch::Tensor x;
  torch::Tensor y;
};

// Four Gaussian blobs in 16 dimensions, labelled by blob.
std::vector<Batch> MakeData(int samples, int batch_size, torch::Tensor centers) {
  std::vector<Batch> batches;
  for (int start = 0; start < samples; start += batch_size) {
    int n = std::min(batch_size, samples - start);
    torch::Tensor y = torch::randint(0, 4, {n}, torch::kLong);
    torch::Tensor x = centers.index_select(0, y) + torch::randn({n, 16});
    batches.push_back({x, y});
  }
  return batches;
}

absl::Status Validate(int epochs, int batch_size, double lr, int samples) {
  if (epochs < 1) return absl::InvalidArgumentError(absl::StrFormat("--epochs must be >= 1, got %d", epochs));
  if (batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("--batch_size must be >= 1, got %d", batch_size));
  }
  if (!(lr > 0) || !std::isfinite(lr)) {
    return absl::InvalidArgumentError(absl::StrFormat("--lr must be a finite number > 0, got %g", lr));
  }
  if (samples < batch_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--samples must be >= --batch_size (%d), got %d", batch_size, samples));
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Trains a small MLP with the Ember Engine on synthetic data.");
  absl::ParseCommandLine(argc, argv);
  const int epochs = absl::GetFlag(FLAGS_epochs);
  const int batch_size = absl::GetFlag(FLAGS_batch_size);
  const double lr = absl::GetFlag(FLAGS_lr);
  const int samples = absl::GetFlag(FLAGS_samples);
  if (absl::Status s = Validate(epochs, batch_size, lr, samples); !s.ok()) {
    absl::FPrintF(stderr, "engine_example: %s\n", s.message());
    return 1;
  }
  torch::manual_seed(absl::GetFlag(FLAGS_seed));
  torch::set_num_threads(1);
  torch::Tensor centers = 2.0 * torch::randn({4, 16});
  std::vector<Batch> train = MakeData(samples, batch_size, centers);
  std::vector<Batch> val = MakeData(samples / 4, batch_size, centers);

  torch::nn::Sequential model(torch::nn::Linear(16, 32), torch::nn::ReLU(),
                              torch::nn::Linear(32, 4));
  torch::optim::SGD optimizer(model->parameters(), lr);

  ember::Engine trainer([&](ember::Engine&, const Batch& b) {
    optimizer.zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(b.x), b.y);
    loss.backward();
    optimizer.step();
    return loss.item<double>();
  });

  double correct = 0, seen = 0;
  ember::Engine evaluator([&](ember::Engine&, const Batch& b) {
    torch::NoGradGuard no_grad;
    correct += model->forward(b.x).argmax(1).eq(b.y).sum().item<double>();
    seen += static_cast<double>(b.y.size(0));
  });
  evaluator.On(ember::Events::Started(), [&] { correct = seen = 0; });
  evaluator.On(ember::Events::Completed(),
               [&](ember::Engine& e) { e.state().metrics["accuracy"] = correct / seen; });

  double loss_sum = 0;
  trainer.On(ember::Events::EpochStarted(), [&] { loss_sum = 0; });
  trainer.On(ember::Events::IterationCompleted(), [&](ember::Engine& e) {
    double loss = *e.state().output_as<double>();
    if (!std::isfinite(loss)) {
      absl::FPrintF(stderr, "non-finite loss at iteration %d: terminating\n", e.state().iteration);
      e.Terminate();
    }
    loss_sum += loss;
  });
  trainer.On(ember::Events::EpochCompleted(), [&](ember::Engine& e) -> absl::Status {
    if (absl::Status s = evaluator.Run(val); !s.ok()) return s;
    e.state().metrics["val_accuracy"] = evaluator.state().metrics["accuracy"];
    absl::PrintF("epoch %d/%d  iteration %d  train_loss %.4f  val_accuracy %.4f  (%.2fs)\n",
                 e.state().epoch, *e.state().max_epochs, e.state().iteration,
                 loss_sum / *e.state().epoch_length, e.state().metrics["val_accuracy"],
                 *e.state().epoch_time);
    std::fflush(stdout);
    return absl::OkStatus();
  });

  absl::Status status = trainer.Run(train, {.max_epochs = epochs});
  if (!status.ok()) {
    absl::FPrintF(stderr, "engine_example: %s\n", status.ToString());
    return 1;
  }
  const ember::State& s = trainer.state();
  absl::PrintF(
      "{\"epoch\": %d, \"iteration\": %d, \"val_accuracy\": %.4f, \"samples_per_s\": %.0f}\n",
      s.epoch, s.iteration, s.metrics.at("val_accuracy"),
      static_cast<double>(s.iteration) * batch_size / *s.run_time);
  return 0;
}
