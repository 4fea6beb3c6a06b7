// LibTorch (Debian's libtorch-dev, or LIBTORCH_HOME) compiles under C++20 and runs.
#include <torch/torch.h>

#include "gtest/gtest.h"

TEST(LibTorch, LinksAndComputes) {
  torch::manual_seed(0);
  torch::nn::Linear linear(3, 2);
  torch::Tensor x = torch::ones({4, 3});
  torch::Tensor y = linear->forward(x);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{4, 2}));
  y.sum().backward();
  EXPECT_TRUE(linear->weight.grad().defined());
  EXPECT_DOUBLE_EQ(linear->weight.grad()[0][0].item<double>(), 4.0);
}
