#include "handlers/data_parallel.h"

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "distributed/testing/fake_world.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

TEST(DataParallel, BroadcastsRankZerosWeightsAndAveragesGradients) {
  dist::testing::FakeWorld world(3);
  torch::Tensor grads[3], weights[3];
  std::vector<torch::nn::Sequential> models;
  for (int r = 0; r < 3; ++r) {  // every rank initialises differently (seeded here: one RNG)
    torch::manual_seed(100 + r);
    models.emplace_back(torch::nn::Linear(5, 4), torch::nn::ReLU(), torch::nn::Linear(4, 3));
  }
  world.RunOnEveryRank([&](dist::Communicator& c) {
    torch::nn::Sequential& model = models[c.rank()];
    // Small buckets: several collectives, parameters split across them.
    DataParallel ddp(*model, {.bucket_bytes = 64, .comm = &c});
    ASSERT_TRUE(ddp.status().ok()) << ddp.status();
    EXPECT_GT(ddp.num_buckets(), 1u);
    torch::Tensor x = torch::full({2, 5}, static_cast<float>(c.rank() + 1));
    model->forward(x).sum().backward();
    ASSERT_TRUE(ddp.AllReduceGradients().ok());
    weights[c.rank()] = model->parameters()[0].detach().clone();
    grads[c.rank()] = model->parameters()[0].grad().clone();
  });
  for (int r = 1; r < 3; ++r) {
    EXPECT_TRUE(torch::equal(weights[r], weights[0])) << "rank " << r << " did not get rank 0's weights";
    EXPECT_TRUE(torch::equal(grads[r], grads[0])) << "rank " << r << " has other averaged gradients";
  }
  // The average of the three ranks' gradients, computed in one process.
  torch::manual_seed(100);
  torch::nn::Sequential model(torch::nn::Linear(5, 4), torch::nn::ReLU(), torch::nn::Linear(4, 3));
  for (int r = 0; r < 3; ++r) model->forward(torch::full({2, 5}, static_cast<float>(r + 1))).sum().backward();
  EXPECT_TRUE(torch::allclose(grads[0], model->parameters()[0].grad() / 3, 1e-5, 1e-6));
}

TEST(DataParallel, AStalledRankFailsTheOthersNamingTheBucket) {
  dist::testing::FakeWorld world(2);
  absl::Status results[2];
  world.RunOnEveryRank([&](dist::Communicator& c) {
    torch::nn::Linear model(3, 2);
    DataParallel ddp(*model, {.deadline = absl::Milliseconds(300), .comm = &c});
    if (c.rank() == 1) return;  // never joins the gradient all-reduce
    model->forward(torch::ones({1, 3})).sum().backward();
    results[c.rank()] = ddp.AllReduceGradients();
  });
  ASSERT_FALSE(results[0].ok());
  EXPECT_THAT(std::string(results[0].message()), ::testing::HasSubstr("DataParallel: step 1: gradient all-reduce of bucket 0 of 1 (bias, weight)"));
}

}  // namespace
}  // namespace ember
