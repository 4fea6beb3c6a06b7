#include "handlers/metrics.h"

#include <torch/torch.h>

#include <vector>

#include "distributed/testing/fake_world.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

struct Batch {
  torch::Tensor x, y;
};

// 10 samples, 3 classes: the scores pick class (i % 3) and the label is (i % 2)... known counts.
std::vector<Batch> Data(int rank, int world) {
  std::vector<Batch> out;
  for (int i = rank; i < 10; i += world) {
    torch::Tensor scores = torch::zeros({1, 3});
    scores[0][i % 3] = 1.0;
    out.push_back({scores, torch::full({1}, i % 2, torch::kInt64)});
  }
  return out;
}

double ExpectedAccuracy() {
  int correct = 0;
  for (int i = 0; i < 10; ++i) correct += (i % 3) == (i % 2);
  return correct / 10.0;
}

TEST(Metrics, SameValuesOnOneRankAndOnThreeWithUnevenShards) {
  auto loss = [](const torch::Tensor& p, const torch::Tensor& y) { return torch::nn::functional::cross_entropy(p, y); };
  // One process, for reference.
  Engine one([](Engine&, const Batch& b) { return Prediction{b.x, b.y}; });
  Metrics m1;
  m1.Add("acc", Accuracy()).Add("loss", Loss(loss)).Add("steps", Average([](const Engine&) { return 1.0; }));
  ASSERT_TRUE(m1.Attach(one).ok());
  std::vector<Batch> all = Data(0, 1);
  ASSERT_TRUE(one.Run(all).ok());
  EXPECT_DOUBLE_EQ(one.state().metrics["acc"], ExpectedAccuracy());
  EXPECT_DOUBLE_EQ(one.state().metrics["steps"], 1.0);
  // Three ranks (4, 3 and 3 samples): every rank gets the one-process values.
  dist::testing::FakeWorld world(3);
  double acc[3], ls[3];
  world.RunOnEveryRank([&](dist::Communicator& c) {
    Engine e([](Engine&, const Batch& b) { return Prediction{b.x, b.y}; });
    e.set_communicator(&c);
    Metrics m;
    m.Add("acc", Accuracy()).Add("loss", Loss(loss));
    ASSERT_TRUE(m.Attach(e).ok());
    std::vector<Batch> shard = Data(c.rank(), 3);
    ASSERT_TRUE(e.Run(shard, {.max_epochs = 1}).ok());
    acc[c.rank()] = e.state().metrics["acc"];
    ls[c.rank()] = e.state().metrics["loss"];
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_DOUBLE_EQ(acc[r], ExpectedAccuracy()) << "rank " << r;
    EXPECT_NEAR(ls[r], one.state().metrics["loss"], 1e-12) << "rank " << r;
  }
}

TEST(Metrics, AStepWithoutAPredictionIsAnErrorNamingTheMetric) {
  Engine e([](Engine&, const Batch& b) { return b.x; });
  Metrics m;
  m.Add("acc", Accuracy());
  ASSERT_TRUE(m.Attach(e).ok());
  std::vector<Batch> data = Data(0, 1);
  absl::Status s = e.Run(data);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("Accuracy: the step must return an ember::Prediction"));
}

TEST(Metrics, AStalledRankFailsCompletedAtTheDeadline) {
  dist::testing::FakeWorld world(2);
  absl::Status result;
  world.RunOnEveryRank([&](dist::Communicator& c) {
    if (c.rank() == 1) return;
    Engine e([](Engine&, const Batch& b) { return Prediction{b.x, b.y}; });
    e.set_communicator(&c);
    e.set_collective_timeout(absl::Milliseconds(200));
    Metrics m;
    m.Add("acc", Accuracy());
    ASSERT_TRUE(m.Attach(e).ok());
    std::vector<Batch> data = Data(0, 2);
    result = e.Run(data);
  });
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.message()), ::testing::HasSubstr("Metrics: agreement of 2 sums"));
}

}  // namespace
}  // namespace ember
