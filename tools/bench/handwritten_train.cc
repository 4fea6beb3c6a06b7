// The baseline for the trainer's throughput: the same model (MLP 784-256-128-10), optimizer (SGD
// lr 0.05, momentum 0.9), batch (64), data order (a seeded shuffle of Fashion-MNIST) and thread
// count (1), as a plain LibTorch loop with no engine. Prints samples/s for one epoch.
//   bazel run -c opt //tools/bench:handwritten_train
#include <torch/torch.h>

#include <cstdio>

#include "absl/time/clock.h"
#include "tools/data.h"

int main() {
  torch::set_num_threads(1);
  auto data = ember::tools::LoadDataset("fashion-mnist", 0);
  if (!data.ok()) {
    std::fprintf(stderr, "%s\n", data.status().ToString().c_str());
    return 1;
  }
  torch::manual_seed(0);
  torch::nn::Sequential model(torch::nn::Linear(784, 256), torch::nn::ReLU(), torch::nn::Linear(256, 128),
                              torch::nn::ReLU(), torch::nn::Linear(128, 10));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  const int64_t n = data->train.size(), batch = 64;
  torch::Generator gen = at::detail::createCPUGenerator(1);
  torch::Tensor perm = torch::randperm(n, gen, torch::kInt64);
  const absl::Time start = absl::Now();
  double loss_sum = 0;
  int64_t steps = 0;
  for (int64_t at = 0; at < n; at += batch) {
    torch::Tensor idx = perm.slice(0, at, std::min(at + batch, n));
    torch::Tensor x = data->train.x.index_select(0, idx), y = data->train.y.index_select(0, idx);
    optimizer.zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    loss.backward();
    optimizer.step();
    loss_sum += loss.item<double>();
    ++steps;
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("{\"baseline\": \"hand-written LibTorch loop\", \"samples_per_s\": %.1f, \"train_loss\": %.4f}\n",
              static_cast<double>(steps * batch) / seconds, loss_sum / steps);
  return 0;
}
