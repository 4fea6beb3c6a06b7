// SupervisedStep against every accum_* scenario of golden-training-public.jsonl (recorded on
// ignite v0.5.3's create_supervised_trainer(gradient_accumulation_steps=K)): each scenario is
// replayed from its inputs (model init, SGD options, K, data, epochs) and the rows recorded at
// ITERATION_COMPLETED (output, whether optimizer.step() ran, lr, weights and gradients), the
// iterations that stepped, the comparison run and the resumed run are compared with the
// recording. Float32 values are compared exactly (as float). Then clipping by global norm.
#include "handlers/parallel/supervised_step.h"

#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <future>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/file_system.h"
#include "base/testing/temp_dir.h"
#include "distributed/testing/fake_world.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "handlers/checkpoint/model_checkpoint.h"
#include "handlers/checkpoint/snapshot_fence.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/serialization/torch_save.h"
#include "handlers/terminate_on_nan.h"
#include "nlohmann/json.hpp"
#include "tests/conformance/golden.h"

namespace ember {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using testing::Golden;

struct Batch {
  torch::Tensor x, y;
};

torch::Tensor FromJson(const json& j) {
  // A 1-D or 2-D array of numbers, as float32.
  if (j.is_array() && !j.empty() && j[0].is_array()) {
    std::vector<torch::Tensor> rows;
    for (const json& r : j) rows.push_back(FromJson(r));
    return torch::stack(rows);
  }
  std::vector<float> v;
  for (const json& x : j) v.push_back(x.get<float>());
  return torch::tensor(v, torch::kFloat32);
}

std::vector<Batch> Data(const json& inputs) {
  std::vector<Batch> data;
  for (const json& b : inputs["data"]) data.push_back({FromJson(b["x"]), FromJson(b["y"])});
  return data;
}

// Float32 values compared exactly, as float.
void ExpectTensorEq(const torch::Tensor& actual, const json& expected, const std::string& what) {
  torch::Tensor e = FromJson(expected);
  ASSERT_EQ(actual.sizes(), e.sizes()) << what;
  EXPECT_TRUE(torch::equal(actual.detach().to(torch::kFloat32), e))
      << what << ": " << actual << " vs expected " << e;
}

// One trainer of a scenario: Linear(2, 1) with the recorded init, MSELoss, SGD, the step.
struct Trainer {
  explicit Trainer(const json& inputs, std::optional<int64_t> k = std::nullopt)
      : model(torch::nn::Linear(2, 1)),
        optimizer(model->parameters(), torch::optim::SGDOptions(inputs["optimizer"]["lr"].get<double>())
                                           .momentum(inputs["optimizer"].value("momentum", 0.0))) {
    torch::NoGradGuard no_grad;
    model->weight.copy_(FromJson(inputs["model"]["init"]["weight"]));
    model->bias.copy_(FromJson(inputs["model"]["init"]["bias"]));
    auto created = SupervisedStep::Create(
        [this](const torch::Tensor& x) { return model->forward(x); }, optimizer,
        [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
        {.accumulation_steps = k.value_or(inputs["gradient_accumulation_steps"].get<int64_t>())});
    EXPECT_TRUE(created.ok()) << created.status();
    step = *std::move(created);
    engine = std::make_unique<Engine>([this](Engine& e, const Batch& b) { return (*step)(e, b.x, b.y); });
    engine->On(Events::IterationCompleted(), [this](Engine& e) {
      json row;
      row["iteration"] = e.state().iteration;
      row["epoch"] = e.state().epoch;
      row["output"] = *e.state().output_as<double>();
      row["optimizer_step"] = step->stepped();
      row["lr"] = static_cast<torch::optim::SGDOptions&>(optimizer.param_groups()[0].options()).lr();
      rows.push_back(row);
      weights.push_back(model->weight.detach().clone());
      biases.push_back(model->bias.detach().clone());
      grad_weights.push_back(model->weight.grad().defined() ? model->weight.grad().clone() : torch::Tensor());
      grad_biases.push_back(model->bias.grad().defined() ? model->bias.grad().clone() : torch::Tensor());
      if (step->stepped()) stepped_at.push_back(e.state().iteration);
    });
  }

  torch::nn::Linear model;
  torch::optim::SGD optimizer;
  std::unique_ptr<SupervisedStep> step;
  std::unique_ptr<Engine> engine;
  std::vector<json> rows;
  std::vector<torch::Tensor> weights, biases, grad_weights, grad_biases;
  std::vector<int64_t> stepped_at;
};

void ExpectRows(const Trainer& t, const json& expected_rows, const std::string& scenario) {
  ASSERT_EQ(t.rows.size(), expected_rows.size()) << scenario;
  for (size_t i = 0; i < expected_rows.size(); ++i) {
    const json& ex = expected_rows[i];
    const json& row = t.rows[i];
    const std::string at = absl::StrCat(scenario, " row ", i);
    EXPECT_EQ(row["iteration"], ex["iteration"]) << at;
    EXPECT_EQ(row["epoch"], ex["epoch"]) << at;
    EXPECT_EQ(static_cast<float>(row["output"].get<double>()), ex["output"].get<float>()) << at << ": output";
    EXPECT_EQ(row["optimizer_step"], ex["optimizer_step"]) << at;
    EXPECT_EQ(row["lr"].get<double>(), ex["lr"].get<double>()) << at;
    ExpectTensorEq(t.weights[i], ex["weight"], at + " weight");
    ExpectTensorEq(t.biases[i], ex["bias"], at + " bias");
    ASSERT_TRUE(t.grad_weights[i].defined()) << at;
    ExpectTensorEq(t.grad_weights[i], ex["grad_weight"], at + " grad_weight");
    ExpectTensorEq(t.grad_biases[i], ex["grad_bias"], at + " grad_bias");
  }
}

void ReplayPlain(const std::string& name) {
  const json g = Golden(name);
  ASSERT_FALSE(g.is_null());
  const json& in = g["inputs"];
  Trainer t(in);
  const std::vector<Batch> data = Data(in);
  ASSERT_TRUE(t.engine->Run(data, {.max_epochs = in["max_epochs"].get<int64_t>()}).ok());
  ExpectRows(t, g["expected"]["rows"], name);
  EXPECT_EQ(json(t.stepped_at), g["expected"]["optimizer_steps_at_iterations"]) << name;
  EXPECT_EQ(t.step->optimizer_steps(), static_cast<int64_t>(g["expected"]["optimizer_steps_at_iterations"].size()));
  if (g["expected"].contains("final_state")) {
    EXPECT_EQ(t.engine->state().epoch, g["expected"]["final_state"]["epoch"].get<int64_t>()) << name;
    EXPECT_EQ(t.engine->state().iteration, g["expected"]["final_state"]["iteration"].get<int64_t>()) << name;
  }
}

TEST(SupervisedStepGolden, K1Baseline) { ReplayPlain("accum_k1_baseline"); }
TEST(SupervisedStepGolden, K2) { ReplayPlain("accum_k2"); }
// Windows follow the global iteration: 4 batches per epoch, K = 3, steps at 3 and 6, and the
// trailing window (7, 8) never applied.
TEST(SupervisedStepGolden, K3AcrossEpochs) { ReplayPlain("accum_k3_across_epochs"); }

TEST(SupervisedStepGolden, K2MomentumVsFullBatch) {
  const std::string name = "accum_k2_momentum_vs_full_batch";
  ReplayPlain(name);
  // The comparison: K = 1 on the concatenated pairs of batches.
  const json g = Golden(name);
  const json& in = g["inputs"];
  const std::vector<Batch> data = Data(in);
  std::vector<Batch> full;
  for (size_t j = 0; j + 1 < data.size(); j += 2) {
    full.push_back({torch::cat({data[j].x, data[j + 1].x}), torch::cat({data[j].y, data[j + 1].y})});
  }
  Trainer t(in, /*k=*/1);
  ASSERT_TRUE(t.engine->Run(full, {.max_epochs = 1}).ok());
  const json& rows = g["expected"]["full_batch_rows"];
  ASSERT_EQ(t.rows.size(), rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(t.rows[i]["iteration"], rows[i]["iteration"]);
    EXPECT_EQ(static_cast<float>(t.rows[i]["output"].get<double>()), rows[i]["output"].get<float>()) << i;
    ExpectTensorEq(t.weights[i], rows[i]["weight"], absl::StrCat("full batch row ", i, " weight"));
    ExpectTensorEq(t.biases[i], rows[i]["bias"], absl::StrCat("full batch row ", i, " bias"));
  }
}

TEST(SupervisedStepGolden, Errors) {
  const json g = Golden("accum_errors");
  const json& results = g["expected"]["results"];
  ASSERT_EQ(results.size(), 2u) << "a new case in accum_errors: replay it here";
  torch::nn::Linear model(2, 1);
  torch::optim::SGD opt(model->parameters(), 0.1);
  auto forward = [&](const torch::Tensor& x) { return model->forward(x); };
  auto loss = [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); };
  ASSERT_EQ(results[0]["case"], "K=0");
  for (int64_t k : {0, -1}) {
    auto s = SupervisedStep::Create(forward, opt, loss, {.accumulation_steps = k});
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(std::string(s.status().message()), results[0]["raised"]["message"].get<std::string>()) << k;
  }
  // The second case (scaler=True without amp_mode) has no counterpart: SupervisedStep has no
  // scaler or amp mode.
  EXPECT_EQ(results[1]["case"], "scaler without amp");
}

// Resumed after epoch 1 (iteration 4, one micro-batch into the window 4..6) from the model,
// optimizer and trainer state: the new model has no gradients, so the window applies only
// iterations 5 and 6 (gradients are in no state_dict), and the run differs from the
// uninterrupted one.
TEST(SupervisedStepGolden, K3ResumeMidWindow) {
  const std::string name = "accum_k3_resume_mid_window";
  ReplayPlain(name);  // the uninterrupted run
  const json g = Golden(name);
  const json& in = g["inputs"];
  const std::vector<Batch> data = Data(in);
  Trainer first(in);
  ASSERT_TRUE(first.engine->Run(data, {.max_epochs = 1}).ok());
  ASSERT_EQ(first.engine->state().iteration, 4);
  // Saved: the model's and the optimizer's state (its momentum buffers), and the trainer's.
  std::stringstream optimizer_bytes;
  {
    torch::serialize::OutputArchive archive;
    first.optimizer.save(archive);
    archive.save_to(optimizer_bytes);
  }
  Trainer second(in);
  {
    torch::NoGradGuard no_grad;
    second.model->weight.copy_(first.model->weight);
    second.model->bias.copy_(first.model->bias);
    torch::serialize::InputArchive archive;
    archive.load_from(optimizer_bytes);
    second.optimizer.load(archive);
  }
  ASSERT_FALSE(second.model->weight.grad().defined());
  ASSERT_TRUE(second.engine->LoadStateDict(first.engine->GetStateDict()).ok());
  ASSERT_TRUE(second.engine->Run(data, {.max_epochs = 2}).ok());
  const json& resume = g["expected"]["resume"];
  ExpectRows(second, resume["rows_after_resume"], name + " resumed");
  EXPECT_EQ(json(second.stepped_at), resume["optimizer_steps_at_iterations"]);
  ASSERT_FALSE(resume["matches_uninterrupted"].get<bool>());
  Trainer whole(in);
  ASSERT_TRUE(whole.engine->Run(data, {.max_epochs = 2}).ok());
  EXPECT_FALSE(torch::equal(whole.model->weight, second.model->weight));
}

// ---- Clipping by global norm -------------------------------------------------------------------
std::vector<torch::Tensor> WithGrads(std::vector<std::vector<float>> grads) {
  std::vector<torch::Tensor> params;
  for (const auto& g : grads) {
    torch::Tensor p = torch::zeros({static_cast<int64_t>(g.size())}).requires_grad_(true);
    p.mutable_grad() = torch::tensor(g);
    params.push_back(p);
  }
  return params;
}

TEST(ClipGradNorm, KnownTwoNorm) {
  // Per-parameter norms 5 and 12: the global norm is 13.
  std::vector<torch::Tensor> params = WithGrads({{3, 4}, {12}});
  absl::StatusOr<ClipResult> r = ClipGradNorm(params, 6.5);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->norm, 13.0);
  EXPECT_TRUE(r->clipped());
  EXPECT_NEAR(r->factor, 0.5, 1e-7);
  EXPECT_EQ(r->factor, static_cast<double>(6.5f / (13.0f + 1e-6f)));
  EXPECT_TRUE(torch::allclose(params[0].grad(), torch::tensor({1.5f, 2.0f}), 1e-6, 1e-6)) << params[0].grad();
  EXPECT_TRUE(torch::allclose(params[1].grad(), torch::tensor({6.0f}), 1e-6, 1e-6));
  // The same as LibTorch's own clip_grad_norm_.
  std::vector<torch::Tensor> ref = WithGrads({{3, 4}, {12}});
  EXPECT_EQ(torch::nn::utils::clip_grad_norm_(ref, 6.5), 13.0);
  EXPECT_TRUE(torch::equal(ref[0].grad(), params[0].grad()) && torch::equal(ref[1].grad(), params[1].grad()));
}

TEST(ClipGradNorm, InfinityNorm) {
  std::vector<torch::Tensor> params = WithGrads({{-7, 2}, {3}});
  const double inf = std::numeric_limits<double>::infinity();
  absl::StatusOr<ClipResult> r = ClipGradNorm(params, 3.5, inf);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->norm, 7.0);
  EXPECT_NEAR(r->factor, 0.5, 1e-7);
  EXPECT_TRUE(torch::allclose(params[0].grad(), torch::tensor({-3.5f, 1.0f}), 1e-6, 1e-6)) << params[0].grad();
  std::vector<torch::Tensor> one = WithGrads({{-7, 2}});
  ASSERT_TRUE(ClipGradNorm(one, 100, inf).ok());
  EXPECT_TRUE(torch::equal(one[0].grad(), torch::tensor({-7.0f, 2.0f})));
}

TEST(ClipGradNorm, BelowMaxLeavesGradientsBitwise) {
  std::vector<torch::Tensor> params = WithGrads({{0.1f, -0.2f, 0.3f}, {1e-3f}});
  const torch::Tensor before0 = params[0].grad().clone(), before1 = params[1].grad().clone();
  absl::StatusOr<ClipResult> r = ClipGradNorm(params, 1.0);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->clipped());
  EXPECT_EQ(r->factor, 1.0);
  EXPECT_NEAR(r->norm, std::sqrt(0.01 + 0.04 + 0.09 + 1e-6), 1e-6);
  EXPECT_TRUE(torch::equal(params[0].grad(), before0));
  EXPECT_TRUE(torch::equal(params[1].grad(), before1));
}

TEST(ClipGradNorm, ParametersWithoutGradientsAreSkipped) {
  std::vector<torch::Tensor> params = WithGrads({{3, 4}});
  params.push_back(torch::zeros({2}).requires_grad_(true));  // no gradient
  absl::StatusOr<ClipResult> r = ClipGradNorm(params, 1.0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->norm, 5.0);
  EXPECT_FALSE(params[1].grad().defined());
  std::vector<torch::Tensor> none = {torch::zeros({2}).requires_grad_(true)};
  r = ClipGradNorm(none, 1.0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->norm, 0.0);
  EXPECT_EQ(r->factor, 1.0);
}

TEST(ClipGradNorm, BadArgumentsFailClearly) {
  std::vector<torch::Tensor> params = WithGrads({{3, 4}});
  const double inf = std::numeric_limits<double>::infinity();
  for (double bad : {0.0, -1.0, std::nan(""), inf}) {
    absl::StatusOr<ClipResult> r = ClipGradNorm(params, bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("the max norm must be finite and greater than 0, got"));
  }
  absl::StatusOr<ClipResult> r = ClipGradNorm(params, 1.0, 1.0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(std::string(r.status().message()), "clip_grad_norm: the norm type must be 2 or inf, got 1");
  EXPECT_TRUE(torch::equal(params[0].grad(), torch::tensor({3.0f, 4.0f}))) << "a refused clip changed the gradients";
  // The same checks at Create.
  torch::nn::Linear model(2, 1);
  torch::optim::SGD opt(model->parameters(), 0.1);
  auto forward = [&](const torch::Tensor& x) { return model->forward(x); };
  auto loss = [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); };
  auto s = SupervisedStep::Create(forward, opt, loss, {.clip_grad_norm = -0.5});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(std::string(s.status().message()), "clip_grad_norm: the max norm must be finite and greater than 0, got -0.5");
  s = SupervisedStep::Create(forward, opt, loss, {.clip_grad_norm = 1.0, .norm_type = 3.0});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("norm type must be 2 or inf, got 3"));
}

// K = 2 with clipping: the window's accumulated gradient is clipped once, before the optimizer
// step; the reported norm is the pre-clip norm; the result equals manual accumulation followed by
// LibTorch's clip_grad_norm_.
TEST(SupervisedStepClip, ClipsTheAccumulatedGradientOncePerWindow) {
  torch::manual_seed(3);
  torch::nn::Linear model(4, 2), ref(4, 2);
  {
    torch::NoGradGuard no_grad;
    ref->weight.copy_(model->weight);
    ref->bias.copy_(model->bias);
  }
  torch::optim::SGD opt(model->parameters(), 0.1), ref_opt(ref->parameters(), 0.1);
  auto step = SupervisedStep::Create([&](const torch::Tensor& x) { return model->forward(x); }, opt,
                                     [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
                                     {.accumulation_steps = 2, .clip_grad_norm = 0.05});
  ASSERT_TRUE(step.ok()) << step.status();
  std::vector<Batch> data;
  for (int i = 0; i < 5; ++i) data.push_back({torch::randn({3, 4}), torch::randn({3, 2}) * 5});
  std::vector<double> norms;
  Engine trainer([&](Engine& e, const Batch& b) -> absl::StatusOr<double> {
    absl::StatusOr<double> out = (**step)(e, b.x, b.y);
    if ((*step)->stepped()) norms.push_back(*(*step)->last_window().grad_norm);
    return out;
  });
  ASSERT_TRUE(trainer.Run(data, {.max_epochs = 1}).ok());
  EXPECT_EQ((*step)->optimizer_steps(), 2);  // windows (1, 2), (3, 4); 5 is never applied
  EXPECT_EQ((*step)->clipped_steps(), 2);
  EXPECT_LT((*step)->last_window().clip_factor, 1.0);
  EXPECT_EQ((*step)->last_window().iteration, 4);
  for (size_t w = 0; w < 2; ++w) {
    ref_opt.zero_grad();
    for (size_t i = 2 * w; i < 2 * w + 2; ++i) (torch::mse_loss(ref->forward(data[i].x), data[i].y) / 2).backward();
    const double norm = torch::nn::utils::clip_grad_norm_(ref->parameters(), 0.05);
    EXPECT_NEAR(norms[w], norm, 1e-6 * norm) << "window " << w;
    ref_opt.step();
  }
  EXPECT_TRUE(torch::allclose(model->weight, ref->weight, 1e-6, 1e-7)) << model->weight << ref->weight;
  EXPECT_TRUE(torch::allclose(model->bias, ref->bias, 1e-6, 1e-7));
}

TEST(SupervisedStepClip, RefusesAccumulationWithOverlappedDataParallel) {
  torch::nn::Linear model(2, 1);
  torch::optim::SGD opt(model->parameters(), 0.1);
  DataParallel overlapped(*model, {.overlap = true});
  ASSERT_TRUE(overlapped.status().ok());
  auto forward = [&](const torch::Tensor& x) { return model->forward(x); };
  auto loss = [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); };
  auto s = SupervisedStep::Create(forward, opt, loss, {.accumulation_steps = 2, .data_parallel = &overlapped});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("construct it with overlap = false to accumulate"));
  EXPECT_TRUE(SupervisedStep::Create(forward, opt, loss, {.accumulation_steps = 1, .data_parallel = &overlapped}).ok());
  DataParallel plain(*model, {.overlap = false});
  EXPECT_TRUE(SupervisedStep::Create(forward, opt, loss, {.accumulation_steps = 2, .data_parallel = &plain}).ok());
}

// ignite's output_transform(x, y, y_pred, loss * K) gives the step's output: what TerminateOnNan
// sees (here NaN at iteration 3, the first of the second window: the run stops there, before that
// window is applied).
TEST(SupervisedStepOutput, OutputTransformGivesTheOutputTerminateOnNanSees) {
  torch::nn::Linear model(2, 1);
  torch::optim::SGD opt(model->parameters(), 0.1);
  const double expected_first = [&] {
    torch::NoGradGuard no_grad;
    return torch::mse_loss(model->forward(torch::ones({3, 2})), torch::zeros({3, 1})).item<double>();
  }();
  std::vector<double> seen;
  Engine* engine = nullptr;
  auto step = SupervisedStep::Create(
      [&](const torch::Tensor& x) { return model->forward(x); }, opt,
      [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
      {.accumulation_steps = 2,
       .output_transform = [&](const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& y_pred,
                               const torch::Tensor& loss) {
         EXPECT_EQ(y_pred.sizes(), y.sizes());
         EXPECT_EQ(x.size(0), y.size(0));
         seen.push_back(loss.item<double>());
         return engine->state().iteration == 3 ? std::nan("") : loss.item<double>();
       }});
  ASSERT_TRUE(step.ok()) << step.status();
  Engine trainer([&](Engine& e, const Batch& b) { return (**step)(e, b.x, b.y); });
  engine = &trainer;
  TerminateOnNan ton;
  trainer.On(Events::IterationCompleted(), ton);
  std::vector<Batch> data(6, Batch{torch::ones({3, 2}), torch::zeros({3, 1})});
  ASSERT_TRUE(trainer.Run(data, {.max_epochs = 1}).ok());
  EXPECT_EQ(trainer.state().iteration, 3);
  EXPECT_TRUE(trainer.outcome().terminated());
  EXPECT_EQ((*step)->optimizer_steps(), 1);
  ASSERT_EQ(seen.size(), 3u);
  // loss * K: the micro-batch's mean loss, not the scaled one (iterations 1 and 2 see the same
  // parameters and data).
  EXPECT_EQ(seen[0], expected_first);
  EXPECT_EQ(seen[1], seen[0]);
}

// ---- The snapshot fence --------------------------------------------------------------------------
// Holds a background snapshot's copy before its first piece until Release().
class HeldCopy {
 public:
  HeldCopy() : released_(release_.get_future().share()) {
    SetSnapshotPieceHookForTesting([this](size_t piece) {
      if (piece != 0 || held_.exchange(true)) return;
      reached_.set_value();
      released_.wait();
    });
  }
  ~HeldCopy() {
    Release();
    SetSnapshotPieceHookForTesting({});
  }
  void WaitReached() { reached_future_.wait(); }
  void Release() {
    if (!released_flag_.exchange(true)) release_.set_value();
  }

 private:
  std::promise<void> release_;
  std::shared_future<void> released_;
  std::promise<void> reached_;
  std::shared_future<void> reached_future_ = reached_.get_future().share();
  std::atomic<bool> held_{false}, released_flag_{false};
};

// Without DataParallel the step itself waits at the fence before optimizer.step(): a checkpoint
// copying the parameters in the background (held here, released 100 ms later by a timer, not by
// the training thread) saves the parameters of its own iteration, not the next step's (SGD writes
// through p.data(), which no version counter sees).
TEST(SupervisedStepFence, TheOptimizerStepWaitsForABackgroundSnapshot) {
  const std::string dir = testing::TempDir("supervised_step_fence");
  torch::nn::Linear model(4, 4);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.5));
  auto step = SupervisedStep::Create([&](const torch::Tensor& x) { return model->forward(x); }, optimizer,
                                     [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); });
  ASSERT_TRUE(step.ok());
  HeldCopy hold;
  auto ckpt = ModelCheckpoint::Create(
      {.disk = {.dirname = dir}, .checkpoint = {.n_saved = 2, .async_save = true, .snapshot_in_background = true}},
      {{"model", model}, {"optimizer", optimizer}});
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  torch::Tensor weight_at_save;
  std::thread timer;
  Engine trainer([&](Engine& e, const Batch& b) -> absl::StatusOr<double> {
    if (e.state().epoch == 2) {
      hold.WaitReached();
      timer = std::thread([&hold] {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        hold.Release();
      });
    }
    absl::StatusOr<double> out = (**step)(e, b.x, b.y);
    if (e.state().epoch == 1) weight_at_save = model->weight.detach().clone();
    return out;
  });
  ASSERT_TRUE((*ckpt)->Attach(trainer, Events::EpochCompleted()).ok());
  std::vector<Batch> data = {{torch::ones({2, 4}), torch::zeros({2, 4})}};
  absl::Status run = trainer.Run(data, {.max_epochs = 2});
  if (timer.joinable()) timer.join();
  ASSERT_TRUE(run.ok()) << run;
  absl::StatusOr<Value> first = ReadTorchSaveFile(JoinPath(dir, "checkpoint_1.pt"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(torch::equal(first->Find("model")->Find("weight")->as_tensor(), weight_at_save))
      << "the optimizer step landed in the held snapshot";
}

// ---- Mixed precision on the CPU (bfloat16) ------------------------------------------------------
TEST(CpuAutocastScope, RestoresTheStateItFound) {
  ASSERT_FALSE(CpuAutocastScope::Enabled());
  const torch::ScalarType before = CpuAutocastScope::Dtype();
  {
    CpuAutocastScope outer(torch::kBFloat16);
    EXPECT_TRUE(CpuAutocastScope::Enabled());
    EXPECT_EQ(CpuAutocastScope::Dtype(), torch::kBFloat16);
    torch::Tensor a = torch::randn({2, 3}), b = torch::randn({3, 2});
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
    {
      CpuAutocastScope inner(torch::kBFloat16);
      EXPECT_TRUE(CpuAutocastScope::Enabled());
    }
    EXPECT_TRUE(CpuAutocastScope::Enabled()) << "leaving a nested scope turned autocast off";
  }
  EXPECT_FALSE(CpuAutocastScope::Enabled());
  EXPECT_EQ(CpuAutocastScope::Dtype(), before);
  EXPECT_EQ(torch::mm(torch::randn({2, 3}), torch::randn({3, 2})).scalar_type(), torch::kFloat32);
}

TEST(SupervisedStepAutocast, ForwardAndLossInBFloat16BackwardAndStepInFloat32) {
  torch::manual_seed(5);
  torch::nn::Linear model(8, 3), plain(8, 3);
  {
    torch::NoGradGuard no_grad;
    plain->weight.copy_(model->weight);
    plain->bias.copy_(model->bias);
  }
  torch::optim::SGD opt(model->parameters(), 0.1), plain_opt(plain->parameters(), 0.1);
  std::vector<torch::ScalarType> pred_dtypes;
  auto step = SupervisedStep::Create(
      [&](const torch::Tensor& x) {
        torch::Tensor p = model->forward(x);
        pred_dtypes.push_back(p.scalar_type());
        return p;
      },
      opt, [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
      {.accumulation_steps = 2, .autocast_cpu_dtype = torch::kBFloat16});
  ASSERT_TRUE(step.ok()) << step.status();
  auto plain_step = SupervisedStep::Create(
      [&](const torch::Tensor& x) { return plain->forward(x); }, plain_opt,
      [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); }, {.accumulation_steps = 2});
  ASSERT_TRUE(plain_step.ok());
  std::vector<Batch> data;
  for (int i = 0; i < 4; ++i) data.push_back({torch::randn({5, 8}), torch::randn({5, 3})});
  Engine a([&](Engine& e, const Batch& b) { return (**step)(e, b.x, b.y); });
  Engine b([&](Engine& e, const Batch& b) { return (**plain_step)(e, b.x, b.y); });
  ASSERT_TRUE(a.Run(data, {.max_epochs = 1}).ok());
  ASSERT_TRUE(b.Run(data, {.max_epochs = 1}).ok());
  ASSERT_EQ(pred_dtypes.size(), 4u);
  for (torch::ScalarType t : pred_dtypes) EXPECT_EQ(t, torch::kBFloat16);
  EXPECT_FALSE(CpuAutocastScope::Enabled()) << "the step left autocast on";
  EXPECT_EQ(model->weight.scalar_type(), torch::kFloat32);
  EXPECT_EQ(model->weight.grad().scalar_type(), torch::kFloat32);
  EXPECT_EQ((*step)->optimizer_steps(), 2);
  // Close to the float32 run, not equal to it (bfloat16 has 8 bits of mantissa).
  EXPECT_TRUE(torch::allclose(model->weight, plain->weight, 0.05, 0.02)) << model->weight << plain->weight;
  EXPECT_FALSE(torch::equal(model->weight, plain->weight)) << "autocast changed nothing";

  auto bad = SupervisedStep::Create([&](const torch::Tensor& x) { return model->forward(x); }, opt,
                                    [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
                                    {.autocast_cpu_dtype = torch::kFloat16});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(std::string(bad.status().message()),
            "SupervisedStep: autocast_cpu_dtype Half: CPU autocast supports BFloat16 only");
}


// ---- Mixed precision on a GPU (float16): the scope's flags; the GPU run is tests/gpu ---------
TEST(CudaAutocastScope, SetsCudaAutocastAloneAndRestoresIt) {
  // Autocast's flags are thread-local dispatch state: settable without a GPU.
  ASSERT_FALSE(CudaAutocastScope::Enabled());
  const torch::ScalarType before = CudaAutocastScope::Dtype();
  {
    CudaAutocastScope outer;  // float16, as torch.autocast("cuda")
    EXPECT_TRUE(CudaAutocastScope::Enabled());
    EXPECT_EQ(CudaAutocastScope::Dtype(), torch::kFloat16);
    EXPECT_FALSE(CpuAutocastScope::Enabled()) << "the CUDA scope turned CPU autocast on";
    // CPU tensors are not cast by CUDA autocast.
    EXPECT_EQ(torch::mm(torch::randn({2, 3}), torch::randn({3, 2})).scalar_type(), torch::kFloat32);
    {
      CudaAutocastScope inner(torch::kBFloat16);
      EXPECT_EQ(CudaAutocastScope::Dtype(), torch::kBFloat16);
    }
    EXPECT_TRUE(CudaAutocastScope::Enabled()) << "leaving a nested scope turned autocast off";
    EXPECT_EQ(CudaAutocastScope::Dtype(), torch::kFloat16) << "leaving a nested scope kept its dtype";
  }
  EXPECT_FALSE(CudaAutocastScope::Enabled());
  EXPECT_EQ(CudaAutocastScope::Dtype(), before);
}

TEST(AutocastScope, DtypesAndDevicesOutsideAutocastAreNamed) {
  EXPECT_TRUE(ValidateAutocastDtype(c10::DeviceType::CPU, torch::kBFloat16).ok());
  EXPECT_TRUE(ValidateAutocastDtype(c10::DeviceType::CUDA, torch::kFloat16).ok());
  EXPECT_TRUE(ValidateAutocastDtype(c10::DeviceType::CUDA, torch::kBFloat16).ok());
  EXPECT_EQ(std::string(ValidateAutocastDtype(c10::DeviceType::CUDA, torch::kFloat32).message()),
            "autocast dtype Float on cuda: allowed: Half, BFloat16");
  EXPECT_EQ(std::string(ValidateAutocastDtype(c10::DeviceType::CPU, torch::kFloat16).message()),
            "autocast dtype Half on cpu: CPU autocast supports BFloat16 only");
  EXPECT_EQ(std::string(ValidateAutocastDtype(c10::DeviceType::Meta, torch::kFloat16).message()),
            "autocast device meta: allowed: cpu, cuda");
  EXPECT_THROW(AutocastScope(c10::DeviceType::Meta, torch::kFloat16), c10::Error);
  // A refused dtype throws before anything changes (LibTorch 1.13 throws on a CPU Half itself,
  // after turning the flag on).
  for (torch::ScalarType bad : {torch::kFloat16, torch::kFloat32}) {
    try {
      CpuAutocastScope scope(bad);
      ADD_FAILURE() << "CpuAutocastScope(" << c10::toString(bad) << ") was accepted";
    } catch (const c10::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("CPU autocast supports BFloat16 only"));
    }
    EXPECT_FALSE(CpuAutocastScope::Enabled()) << "a refused scope left CPU autocast on";
  }
  try {
    CudaAutocastScope scope(torch::kInt);
    ADD_FAILURE() << "CudaAutocastScope(Int) was accepted";
  } catch (const c10::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("autocast dtype Int on cuda: allowed: Half, BFloat16"));
  }
  EXPECT_FALSE(CudaAutocastScope::Enabled()) << "a refused scope left CUDA autocast on";
  EXPECT_NE(CudaAutocastScope::Dtype(), torch::kInt);
  EXPECT_FALSE(AutocastScope::Enabled(c10::DeviceType::CPU)) << "a refused scope left autocast on";
}

TEST(SupervisedStepAutocast, CudaDtypeIsValidatedAndExclusiveWithTheCpuOne) {
  torch::nn::Linear model(2, 1);
  torch::optim::SGD opt(model->parameters(), 0.1);
  auto create = [&](SupervisedStepOptions o) {
    return SupervisedStep::Create([&](const torch::Tensor& x) { return model->forward(x); }, opt,
                                  [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
                                  o);
  };
  EXPECT_TRUE(create({.autocast_cuda_dtype = torch::kFloat16}).ok());
  EXPECT_TRUE(create({.autocast_cuda_dtype = torch::kBFloat16}).ok());
  EXPECT_EQ(std::string(create({.autocast_cuda_dtype = torch::kFloat64}).status().message()),
            "SupervisedStep: autocast_cuda_dtype: autocast dtype Double on cuda: allowed: Half, BFloat16");
  EXPECT_THAT(std::string(create({.autocast_cpu_dtype = torch::kBFloat16, .autocast_cuda_dtype = torch::kFloat16})
                              .status()
                              .message()),
              HasSubstr("autocast_cpu_dtype and autocast_cuda_dtype are both set"));
}

TEST(SupervisedStepAutocast, RanksWithDifferentCudaDtypesAreRefusedOnEveryRank) {
  dist::testing::FakeWorld world(2);
  std::vector<std::string> errors(2);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    torch::nn::Linear model(2, 1);
    torch::optim::SGD opt(model->parameters(), 0.1);
    DataParallel ddp(*model, {.comm = &c, .overlap = false});
    ASSERT_TRUE(ddp.status().ok());
    SupervisedStepOptions o{.data_parallel = &ddp, .deadline = absl::Seconds(20)};
    if (c.rank() == 1) o.autocast_cuda_dtype = torch::kFloat16;
    auto step = SupervisedStep::Create([&](const torch::Tensor& x) { return model->forward(x); }, opt,
                                       [](const torch::Tensor& p, const torch::Tensor& y) { return torch::mse_loss(p, y); },
                                       o);
    errors[c.rank()] = std::string(step.status().message());
  });
  for (const std::string& e : errors) EXPECT_THAT(e, HasSubstr("autocast_cuda_dtype")) << e;
}

}  // namespace
}  // namespace ember
