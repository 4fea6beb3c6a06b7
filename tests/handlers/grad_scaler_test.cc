// GradScaler (dynamic loss scaling) alone and in SupervisedStep: torch's update rule, Python's
// state_dict layout, exactness with a power-of-two scale, skipped steps on inf/NaN gradients, and
// the same skip on every rank when one rank's gradients overflow (FakeWorld; the found-inf
// decision rides in DataParallel's all-reduce).
#include "handlers/parallel/grad_scaler.h"

#include <torch/torch.h>

#include <cfloat>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "distributed/testing/fake_world.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/parallel/supervised_step.h"

namespace ember {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(GradScaler, BadOptionsAreNamedWithWhatIsAllowed) {
  struct Case {
    GradScalerOptions o;
    std::string says;
  } cases[] = {
      {{.init_scale = 0}, "init_scale must be finite in float32 and > 0, got 0"},
      {{.init_scale = 1e39}, "init_scale must be finite in float32"},
      {{.init_scale = NAN}, "init_scale"},
      {{.init_scale = 1e-50}, "init_scale must be finite in float32 and > 0, got 1e-50"},  // 0 as a float32
      {{.growth_factor = 1.0}, "growth_factor must be > 1 (and finite), got 1"},
      {{.backoff_factor = 1.0}, "backoff_factor must be in (0, 1), got 1"},
      {{.backoff_factor = 0}, "backoff_factor must be in (0, 1), got 0"},
      {{.growth_interval = 0}, "growth_interval must be >= 1, got 0"},
  };
  for (const Case& c : cases) {
    auto s = GradScaler::Create(c.o);
    ASSERT_FALSE(s.ok()) << c.says;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(c.says));
  }
}

// torch's _amp_update_scale_: backoff and reset on inf; growth at growth_interval successes in a
// row, unless the grown scale is not finite.
TEST(GradScaler, UpdateFollowsTorchsRule) {
  auto s = *GradScaler::Create({.init_scale = 8, .growth_factor = 2, .backoff_factor = 0.25, .growth_interval = 3});
  std::vector<double> scales;
  std::vector<int64_t> trackers;
  for (bool inf : {false, false, false, false, true, false, false, false}) {
    s->Update(inf);
    scales.push_back(s->scale());
    trackers.push_back(s->growth_tracker());
  }
  EXPECT_THAT(scales, ElementsAre(8, 8, 16, 16, 4, 4, 4, 8));
  EXPECT_THAT(trackers, ElementsAre(1, 2, 0, 1, 0, 1, 2, 0));
  EXPECT_EQ(s->skipped_steps(), 1);
  auto big = *GradScaler::Create({.init_scale = FLT_MAX, .growth_interval = 1});
  big->Update(false);
  EXPECT_EQ(big->scale(), static_cast<double>(FLT_MAX));  // 2 * FLT_MAX is inf: not applied
  EXPECT_EQ(big->growth_tracker(), 0);
}

TEST(GradScaler, StateDictHasPythonsLayoutAndRoundTrips) {
  auto s = *GradScaler::Create({.init_scale = 1024, .growth_interval = 5});
  s->Update(false);
  s->Update(false);
  Value state = s->StateDict();
  std::vector<std::string> keys;
  for (const Value& k : state.keys()) keys.push_back(k.as_string());
  EXPECT_THAT(keys, ElementsAre("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"));
  EXPECT_TRUE(state.Find("scale")->is_double());
  EXPECT_EQ(state.Find("scale")->as_double(), 1024.0);
  EXPECT_TRUE(state.Find("growth_interval")->is_int());
  EXPECT_EQ(state.Find("_growth_tracker")->as_int(), 2);
  auto t = *GradScaler::Create();
  ASSERT_TRUE(t->LoadStateDict(state).ok());
  EXPECT_EQ(t->scale(), 1024.0);
  EXPECT_EQ(t->growth_tracker(), 2);
  EXPECT_EQ(t->options().growth_interval, 5);
  // Malformed states are named.
  Value missing = Value::Dict();
  missing.Set("scale", 2.0);
  EXPECT_THAT(std::string(t->LoadStateDict(missing).message()), HasSubstr("no 'growth_factor'"));
  Value bad_tracker = state;
  bad_tracker.Set("_growth_tracker", int64_t{5});
  EXPECT_THAT(std::string(t->LoadStateDict(bad_tracker).message()),
              HasSubstr("_growth_tracker 5 is outside [0, growth_interval = 5)"));
  Value bad_factor = state;
  bad_factor.Set("backoff_factor", 2.0);
  EXPECT_THAT(std::string(t->LoadStateDict(bad_factor).message()), HasSubstr("backoff_factor must be in (0, 1)"));
  EXPECT_EQ(t->scale(), 1024.0);  // a refused state changes nothing
}

struct Batch {
  torch::Tensor x, y;
};

// A Linear(3, 1) trained with SGD(momentum) through SupervisedStep over `data`, with or without
// a scaler; returns the final weight and bias.
std::vector<torch::Tensor> Train(const std::vector<Batch>& data, GradScaler* scaler) {
  torch::manual_seed(7);
  torch::nn::Linear model(3, 1);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  auto step = SupervisedStep::Create([&](const torch::Tensor& x) { return model->forward(x); }, optimizer,
                                     [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
                                     {.accumulation_steps = 2, .grad_scaler = scaler});
  EXPECT_TRUE(step.ok()) << step.status();
  Engine trainer([&](Engine& e, const Batch& b) { return (**step)(e, b.x, b.y); });
  EXPECT_TRUE(trainer.Run(data, {.max_epochs = 1}).ok());
  return {model->weight.detach().clone(), model->bias.detach().clone()};
}

std::vector<Batch> Data(int n) {
  std::vector<Batch> data;
  for (int i = 0; i < n; ++i) {
    torch::Tensor x = torch::arange(6, torch::kFloat32).reshape({2, 3}) * (0.1f * static_cast<float>(i + 1));
    data.push_back({x, x.sum(1, true) * 0.5f - 0.25f});
  }
  return data;
}

// Scaling by a power of two and unscaling by its exact inverse is exact in float32: the scaled
// run is bitwise the unscaled one.
TEST(GradScaler, APowerOfTwoScaleChangesNothing) {
  auto scaler = *GradScaler::Create({.init_scale = 1024, .growth_interval = 100});
  std::vector<torch::Tensor> scaled = Train(Data(8), scaler.get());
  std::vector<torch::Tensor> plain = Train(Data(8), nullptr);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(torch::equal(scaled[i], plain[i])) << i;
  EXPECT_EQ(scaler->skipped_steps(), 0);
  EXPECT_EQ(scaler->growth_tracker(), 4);  // 8 micro-batches, K = 2: 4 steps
}

// A window whose gradients overflow is skipped (the parameters keep their values) and the scale
// backs off; the other windows step.
TEST(GradScaler, AnOverflowingWindowIsSkippedAndTheScaleBacksOff) {
  std::vector<Batch> data = Data(6);
  data[2].x[0][0] = 3e38f;  // window 2 (iterations 3, 4): inf in the forward, non-finite gradients
  auto scaler = *GradScaler::Create({.init_scale = 1024, .growth_interval = 100});
  std::vector<torch::Tensor> got = Train(data, scaler.get());
  EXPECT_EQ(scaler->skipped_steps(), 1);
  EXPECT_EQ(scaler->scale(), 512.0);
  EXPECT_EQ(scaler->growth_tracker(), 1);  // window 3 stepped after the reset
  for (const torch::Tensor& t : got) EXPECT_TRUE(torch::isfinite(t).all().item<bool>());
  // Without the scaler the same data poisons the weights.
  std::vector<torch::Tensor> unscaled = Train(data, nullptr);
  EXPECT_FALSE(torch::isfinite(unscaled[0]).all().item<bool>());
}

// Two ranks, different data; rank 1's gradients overflow in window 2 only. The average is
// non-finite on both: both skip that window, hold the same scale and bitwise the same weights.
TEST(GradScaler, OneRanksOverflowSkipsTheStepOnEveryRank) {
  dist::testing::FakeWorld world(2);
  std::vector<torch::Tensor> weights(2);
  std::vector<double> scales(2);
  std::vector<int64_t> skipped(2);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    torch::manual_seed(7);
    torch::nn::Linear model(3, 1);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05));
    DataParallel ddp(*model, {.comm = &c, .overlap = false});
    ASSERT_TRUE(ddp.status().ok());
    auto scaler = *GradScaler::Create({.init_scale = 256, .growth_interval = 100});
    auto step = SupervisedStep::Create([&](const torch::Tensor& x) { return model->forward(x); }, optimizer,
                                       [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
                                       {.accumulation_steps = 2, .data_parallel = &ddp, .grad_scaler = scaler.get()});
    ASSERT_TRUE(step.ok()) << step.status();
    std::vector<Batch> data = Data(6);
    for (Batch& b : data) b.x = b.x + static_cast<float>(c.rank());
    if (c.rank() == 1) data[3].x[1][2] = 3e38f;
    Engine trainer([&](Engine& e, const Batch& b) { return (**step)(e, b.x, b.y); });
    trainer.set_communicator(&c);
    ASSERT_TRUE(trainer.Run(data, {.max_epochs = 1}).ok());
    weights[c.rank()] = model->weight.detach().clone();
    scales[c.rank()] = scaler->scale();
    skipped[c.rank()] = scaler->skipped_steps();
  });
  EXPECT_TRUE(torch::equal(weights[0], weights[1]));
  EXPECT_TRUE(torch::isfinite(weights[0]).all().item<bool>());
  EXPECT_EQ(scales[0], 128.0);
  EXPECT_EQ(scales[1], 128.0);
  EXPECT_EQ(skipped[0], 1);
  EXPECT_EQ(skipped[1], 1);
}

// Ranks whose scalers differ are refused by SupervisedStep::Create on every rank.
TEST(GradScaler, RanksWithDifferentScalersAreRefused) {
  dist::testing::FakeWorld world(2);
  std::vector<absl::Status> status(2);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    torch::nn::Linear model(3, 1);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05));
    DataParallel ddp(*model, {.comm = &c, .overlap = false});
    auto scaler = *GradScaler::Create({.init_scale = c.rank() == 0 ? 256.0 : 512.0});
    status[c.rank()] = SupervisedStep::Create([&](const torch::Tensor& x) { return model->forward(x); }, optimizer,
                                              [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
                                              {.data_parallel = &ddp, .grad_scaler = scaler.get()})
                           .status();
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_FALSE(status[r].ok()) << r;
    EXPECT_THAT(std::string(status[r].message()), HasSubstr("grad_scaler.scale")) << r;
  }
}

}  // namespace
}  // namespace ember
