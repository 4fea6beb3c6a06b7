// DataParallel on CUDA tensors over NCCL (issue 15): the gradient buckets are device buffers,
// reduced where they lie. Over several steps staged_buckets() stays 0 and the communicator copies
// no byte between the device and the host (host_staged_bytes()), the averaged gradients stay on
// the device, and the engine's agreement carried in the last bucket stops the run at a NaN.
// One GPU holds one NCCL rank, so the one-rank NCCL communicator is presented as rank 0 of a world
// of 2 whose peer contributes zeros: the average is half of this rank's gradient, which a
// reference copy of the model gives. Skipped, with the reason, without NCCL, without a CUDA
// LibTorch (Debian's is CPU-only) or without a GPU. Also float16 AMP (CudaAutocastScope with a
// GradScaler) in SupervisedStep on the device.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "distributed/nccl_communicator.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/parallel/grad_scaler.h"
#include "handlers/parallel/supervised_step.h"
#include "handlers/terminate_on_nan.h"

namespace ember {
namespace {

#define SKIP_WITHOUT_CUDA()                                                                          \
  if (!dist::NcclBuilt()) GTEST_SKIP() << "this build has no NCCL backend (no NCCL under CUDA_HOME)"; \
  if (!torch::cuda::is_available())                                                                  \
  GTEST_SKIP() << "LibTorch without CUDA or no CUDA device: the GPU path of DataParallel was built but not run"

// Rank 0 of 2 over a one-rank NCCL communicator: the absent peer adds zeros to every sum and
// takes rank 0's broadcast.
class FirstOfTwo : public dist::Communicator {
 public:
  explicit FirstOfTwo(dist::Communicator& nccl) : nccl_(nccl) {}
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  int local_rank() const override { return 0; }
  std::string backend() const override { return "nccl"; }
  bool device_buffers() const override { return true; }

 protected:
  absl::Status DoAllReduce(absl::Span<double> v, dist::ReduceOp op, absl::Time d) override {
    return nccl_.AllReduce(v, op, d);
  }
  absl::Status DoAllReduce(absl::Span<float> v, dist::ReduceOp op, absl::Time d) override {
    return nccl_.AllReduce(v, op, d);
  }
  absl::Status DoAllGather(absl::Span<const double> send, absl::Span<double> recv, absl::Time d) override {
    std::fill(recv.begin(), recv.end(), 0.0);
    std::copy(send.begin(), send.end(), recv.begin());
    return nccl_.Barrier(d);
  }
  absl::Status DoBroadcast(std::string& bytes, int root, absl::Time d) override {
    return nccl_.Broadcast(bytes, root, d);
  }
  absl::Status DoBarrier(absl::Time d) override { return nccl_.Barrier(d); }
  absl::StatusOr<std::unique_ptr<dist::Pending>> DoStartAllReduce(const dist::Buffer& b, dist::ReduceOp op,
                                                                  absl::Time d) override {
    return nccl_.StartAllReduce(b, op, d);
  }

 private:
  dist::Communicator& nccl_;
};

torch::nn::Sequential Model() {
  return torch::nn::Sequential(torch::nn::Linear(64, 128), torch::nn::ReLU(), torch::nn::Linear(128, 64),
                               torch::nn::ReLU(), torch::nn::Linear(64, 10));
}

// The one-rank NCCL communicator on GPU 0, and the two-rank view of it the tests reduce through.
class DataParallelGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_CUDA();
    absl::StatusOr<std::unique_ptr<dist::Communicator>> nccl =
        dist::CreateNcclCommunicator({.rank = 0, .world_size = 1, .local_rank = 0, .init_timeout = absl::Seconds(60)});
    ASSERT_TRUE(nccl.ok()) << nccl.status();
    nccl_ = *std::move(nccl);
    comm_ = std::make_unique<FirstOfTwo>(*nccl_);
  }

  const torch::Device cuda{torch::kCUDA, 0};
  std::unique_ptr<dist::Communicator> nccl_;
  std::unique_ptr<FirstOfTwo> comm_;
};

TEST_F(DataParallelGpu, GradientBucketsAreReducedOnTheDevice) {
  torch::manual_seed(3);
  torch::nn::Sequential model = Model();
  torch::nn::Sequential reference = Model();
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < model->parameters().size(); ++i) reference->parameters()[i].copy_(model->parameters()[i]);
  }
  model->to(cuda);
  reference->to(cuda);
  DataParallel ddp(*model, {.bucket_bytes = 16 << 10, .deadline = absl::Seconds(60), .comm = comm_.get()});
  ASSERT_TRUE(ddp.status().ok()) << ddp.status();
  ASSERT_GT(ddp.num_buckets(), 1u);
  const int64_t staged_before = nccl_->host_staged_bytes();  // the broadcast went through the host
  const int steps = 5;
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE(step);
    model->zero_grad();
    reference->zero_grad();
    torch::Tensor x = torch::randn({32, 64}, cuda);
    torch::Tensor y = torch::randint(0, 10, {32}, torch::TensorOptions().dtype(torch::kLong).device(cuda));
    torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    ASSERT_TRUE(ddp.AllReduceGradients().ok());
    torch::nn::functional::cross_entropy(reference->forward(x), y).backward();
    for (size_t i = 0; i < model->parameters().size(); ++i) {
      const torch::Tensor& g = model->parameters()[i].grad();
      ASSERT_TRUE(g.device().is_cuda()) << "parameter " << i << "'s gradient left the device";
      EXPECT_TRUE(torch::allclose(g, reference->parameters()[i].grad() * 0.5, 1e-6, 0)) << "parameter " << i;
    }
  }
  EXPECT_EQ(ddp.staged_buckets(), 0) << "a bucket was copied through the host";
  EXPECT_EQ(nccl_->host_staged_bytes(), staged_before) << "the communicator staged gradient bytes";
  EXPECT_EQ(ddp.buckets_reduced(), steps * static_cast<int64_t>(ddp.num_buckets()));
  EXPECT_EQ(ddp.steps(), steps);
}

TEST_F(DataParallelGpu, TheAgreementCarriedOnTheDeviceStopsAtTheNan) {
  torch::manual_seed(4);
  torch::nn::Sequential model = Model();
  model->to(cuda);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.01));
  DataParallel ddp(*model, {.bucket_bytes = 16 << 10, .deadline = absl::Seconds(60), .comm = comm_.get()});
  ASSERT_TRUE(ddp.status().ok()) << ddp.status();
  Engine trainer([&](Engine& e, const int& i) -> absl::StatusOr<double> {
    optimizer.zero_grad();
    torch::Tensor x = torch::full({8, 64}, static_cast<float>(i) / 10, cuda);
    torch::Tensor loss = model->forward(x).pow(2).mean();
    loss.backward();
    double output = loss.item<double>();
    if (e.state().iteration == 4) output = std::nan("");
    absl::Status s = ddp.AllReduceGradients(e, output);
    if (!s.ok()) return s;
    optimizer.step();
    return output;
  });
  trainer.set_communicator(comm_.get());
  TerminateOnNan ton;
  trainer.On(Events::IterationCompleted(), ton);
  const int64_t staged_before = nccl_->host_staged_bytes();
  ASSERT_TRUE(trainer.Run(std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}, {.max_epochs = 1}).ok());
  EXPECT_EQ(trainer.state().iteration, 4);
  EXPECT_EQ(trainer.agreements(), 0) << "an iteration agreed in a collective of its own";
  EXPECT_EQ(trainer.carried_agreements(), 4);
  EXPECT_EQ(ddp.carried_agreements(), 4);
  EXPECT_EQ(ton.bad_ranks(), std::vector<int>{0});
  EXPECT_EQ(ddp.staged_buckets(), 0);
  EXPECT_EQ(nccl_->host_staged_bytes(), staged_before);
}


// torch's AMP recipe on the device (issue 28): forward and loss in float16 under a
// CudaAutocastScope, the parameters and their gradients float32, the loss scaled; a window whose
// float16 forward overflows is skipped and the scale backs off. Needs a GPU, not NCCL.
TEST(SupervisedStepGpu, Float16AutocastWithLossScaling) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP() << "LibTorch without CUDA or no CUDA device: CUDA autocast was built but not run";
  }
  const torch::Device cuda{torch::kCUDA, 0};
  torch::manual_seed(5);
  torch::nn::Sequential model = Model();
  model->to(cuda);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.01));
  absl::StatusOr<std::unique_ptr<GradScaler>> scaler = GradScaler::Create({.init_scale = 1024, .growth_interval = 100});
  ASSERT_TRUE(scaler.ok()) << scaler.status();
  std::vector<torch::ScalarType> pred_types;
  absl::StatusOr<std::unique_ptr<SupervisedStep>> step = SupervisedStep::Create(
      [&](const torch::Tensor& x) {
        torch::Tensor p = model->forward(x);
        pred_types.push_back(p.scalar_type());
        return p;
      },
      optimizer,
      [](const torch::Tensor& p, const torch::Tensor& y) { return torch::nn::functional::cross_entropy(p, y); },
      {.autocast_cuda_dtype = torch::kFloat16, .grad_scaler = scaler->get()});
  ASSERT_TRUE(step.ok()) << step.status();
  std::vector<torch::Tensor> before;
  Engine trainer([&](Engine& e, const int& i) -> absl::StatusOr<double> {
    // Iteration 3's inputs overflow float16 (max 65504) in the first layer: inf, a skipped step.
    const float magnitude = i == 3 ? 1e6f : 1.0f;
    torch::Tensor x = torch::randn({16, 64}, cuda) * magnitude;
    torch::Tensor y = torch::randint(0, 10, {16}, torch::TensorOptions().dtype(torch::kLong).device(cuda));
    if (i == 3) {
      before.clear();
      for (const torch::Tensor& p : model->parameters()) before.push_back(p.detach().clone());
    }
    return (**step)(e, x, y);
  });
  ASSERT_TRUE(trainer.Run(std::vector<int>{1, 2, 3, 4}, {.max_epochs = 1}).ok());
  ASSERT_EQ(pred_types.size(), 4u);
  for (torch::ScalarType t : pred_types) EXPECT_EQ(t, torch::kHalf);
  EXPECT_FALSE(CudaAutocastScope::Enabled()) << "the step left CUDA autocast on";
  for (const torch::Tensor& p : model->parameters()) {
    EXPECT_EQ(p.scalar_type(), torch::kFloat32);
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
  }
  EXPECT_EQ((*scaler)->skipped_steps(), 1);
  EXPECT_EQ((*scaler)->scale(), 512.0) << "the scale did not back off once";
  EXPECT_EQ((*step)->optimizer_steps(), 3) << "the overflowing window was applied";
}

}  // namespace
}  // namespace ember
