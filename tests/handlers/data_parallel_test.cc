#include "handlers/parallel/data_parallel.h"

#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "distributed/default_communicator.h"
#include "distributed/single_process_communicator.h"
#include "distributed/testing/fake_world.h"
#include "engine/engine.h"
#include "handlers/terminate_on_nan.h"
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

// One rank of a small training run: an Engine with TerminateOnNan (and, when `filtered_too`, a
// second one on every third iteration, which cannot propose in the step), DataParallel in
// 64-byte buckets, the step's output NaN on `nan_rank` at `nan_at`.
struct RankRun {
  torch::Tensor weights;
  int64_t stopped_at = 0, agreements = 0, carried = 0, ddp_carried = 0, collectives = 0, reduced = 0, started_early = 0;
  size_t buckets = 0;
  std::vector<int> bad_ranks;
  absl::Status status;
};

RankRun TrainOnRank(dist::Communicator& c, bool carry, bool filtered_too, int nan_rank, int64_t nan_at,
                    bool reduce_alone = false) {
  RankRun out;
  torch::nn::Sequential model(torch::nn::Linear(5, 4), torch::nn::ReLU(), torch::nn::Linear(4, 3));
  {  // the same weights in every run (the ranks' threads share one random generator)
    torch::NoGradGuard no_grad;
    for (torch::Tensor& p : model->parameters()) p.copy_(torch::linspace(-0.5, 0.7, p.numel()).view_as(p));
  }
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  DataParallel ddp(*model, {.bucket_bytes = 64, .comm = &c, .reduce_alone = reduce_alone});
  if (!ddp.status().ok()) {
    out.status = ddp.status();
    return out;
  }
  Engine trainer([&](Engine& e, const int& i) -> absl::StatusOr<double> {
    optimizer.zero_grad();
    torch::Tensor x = torch::full({2, 5}, static_cast<float>(c.rank() + i) / 10);
    torch::Tensor loss = model->forward(x).pow(2).mean();
    loss.backward();
    double output = loss.item<double>();
    if (c.rank() == nan_rank && e.state().iteration == nan_at) output = std::nan("");
    absl::Status s = carry ? ddp.AllReduceGradients(e, output) : ddp.AllReduceGradients();
    if (!s.ok()) return s;
    optimizer.step();
    return output;
  });
  trainer.set_communicator(&c);
  TerminateOnNan ton;
  trainer.On(Events::IterationCompleted(), ton);
  TerminateOnNan every_third;
  if (filtered_too) trainer.On(Events::IterationCompleted().Every(3), every_third);
  const int64_t before = c.collectives();
  out.status = trainer.Run(std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {.max_epochs = 1});
  out.collectives = c.collectives() - before;
  out.weights = model->parameters()[0].detach().clone();
  out.stopped_at = trainer.state().iteration;
  out.agreements = trainer.agreements();
  out.carried = trainer.carried_agreements();
  out.ddp_carried = ddp.carried_agreements();
  out.buckets = ddp.num_buckets();
  out.reduced = ddp.buckets_reduced();
  out.started_early = ddp.buckets_started_early();
  out.bad_ranks = ton.bad_ranks();
  return out;
}

TEST(DataParallelCarry, TheIterationAgreementRidesInTheLastBucket) {
  dist::testing::FakeWorld world(3);
  RankRun carried[3], separate[3];
  world.RunOnEveryRank([&](dist::Communicator& c) { carried[c.rank()] = TrainOnRank(c, true, false, 2, 6); });
  world.RunOnEveryRank([&](dist::Communicator& c) { separate[c.rank()] = TrainOnRank(c, false, false, 2, 6); });
  for (int r = 0; r < 3; ++r) {
    SCOPED_TRACE(r);
    ASSERT_TRUE(carried[r].status.ok()) << carried[r].status;
    ASSERT_TRUE(separate[r].status.ok()) << separate[r].status;
    ASSERT_GT(carried[r].buckets, 1u);
    // Every rank stopped at the NaN's iteration, knowing which rank saw it, either way.
    EXPECT_EQ(carried[r].stopped_at, 6);
    EXPECT_EQ(separate[r].stopped_at, 6);
    EXPECT_THAT(carried[r].bad_ranks, ::testing::ElementsAre(2));
    EXPECT_THAT(separate[r].bad_ranks, ::testing::ElementsAre(2));
    // Carried: no collective of the engine's own; a step costs exactly its buckets.
    EXPECT_EQ(carried[r].agreements, 0);
    EXPECT_EQ(carried[r].carried, 6);
    EXPECT_EQ(carried[r].ddp_carried, 6);
    EXPECT_EQ(carried[r].collectives, 6 * static_cast<int64_t>(carried[r].buckets) + 1);  // + the Run's agreement
    // Not carried: one more per step.
    EXPECT_EQ(separate[r].agreements, 6);
    EXPECT_EQ(separate[r].carried, 0);
    EXPECT_EQ(separate[r].collectives, 6 * static_cast<int64_t>(separate[r].buckets + 1) + 1);
    // The carried bytes do not touch the gradients: the same weights, bitwise.
    EXPECT_TRUE(torch::equal(carried[r].weights, separate[r].weights));
    EXPECT_TRUE(torch::equal(carried[r].weights, carried[0].weights));
  }
}

TEST(DataParallelCarry, AFiringWithAHandlerThatCannotRideAgreesInItsOwnCollective) {
  dist::testing::FakeWorld world(2);
  RankRun runs[2];
  world.RunOnEveryRank([&](dist::Communicator& c) { runs[c.rank()] = TrainOnRank(c, true, true, 1, 7); });
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(r);
    ASSERT_TRUE(runs[r].status.ok()) << runs[r].status;
    EXPECT_EQ(runs[r].stopped_at, 7);
    EXPECT_THAT(runs[r].bad_ranks, ::testing::ElementsAre(1));
    // Iterations 3 and 6 had the filtered handler due: a collective each; the other five rode.
    EXPECT_EQ(runs[r].agreements, 2);
    EXPECT_EQ(runs[r].carried, 5);
    EXPECT_EQ(runs[r].collectives, 7 * static_cast<int64_t>(runs[r].buckets) + 2 + 1);  // + the Run's agreement
  }
}

// World size 1: nothing is reduced by default; reduce_alone runs the bucket path (hooks start every
// bucket but the last during backward, one all-reduce per bucket through the communicator), as
// PyTorch DDP does alone, and changes no result.
TEST(DataParallelAlone, ReduceAloneRunsTheBucketPathAtWorldSizeOneAndChangesNothing) {
  dist::SingleProcessCommunicator plain_comm, alone_comm;
  const RankRun plain = TrainOnRank(plain_comm, true, false, 0, 6);
  const RankRun alone = TrainOnRank(alone_comm, true, false, 0, 6, /*reduce_alone=*/true);
  ASSERT_TRUE(plain.status.ok()) << plain.status;
  ASSERT_TRUE(alone.status.ok()) << alone.status;
  ASSERT_GT(alone.buckets, 1u);
  EXPECT_EQ(plain.reduced, 0);
  EXPECT_EQ(plain.started_early, 0);
  EXPECT_EQ(alone.reduced, 6 * static_cast<int64_t>(alone.buckets));
  EXPECT_EQ(alone.started_early, 6 * static_cast<int64_t>(alone.buckets - 1));  // the last is AllReduceGradients'
  EXPECT_EQ(alone.collectives - plain.collectives, 6 * static_cast<int64_t>(alone.buckets));
  // Nothing rides in a bucket alone (there is no one to agree with), and NaN still stops the run.
  EXPECT_EQ(alone.ddp_carried, 0);
  EXPECT_EQ(plain.stopped_at, 6);
  EXPECT_EQ(alone.stopped_at, 6);
  EXPECT_TRUE(torch::equal(plain.weights, alone.weights));
}

// A parameter unused in a step keeps no gradient alone, as without reduce_alone (an optimizer
// skips it; a zero gradient would move it through momentum).
TEST(DataParallelAlone, AParameterWithoutAGradientKeepsNone) {
  dist::SingleProcessCommunicator c;
  torch::nn::Linear used(3, 2), unused(3, 2);
  torch::nn::Sequential model(used, unused);
  DataParallel ddp(*model, {.bucket_bytes = 1 << 20, .comm = &c, .reduce_alone = true});
  ASSERT_TRUE(ddp.status().ok()) << ddp.status();
  for (int step = 0; step < 2; ++step) {
    used->forward(torch::ones({1, 3})).sum().backward();
    ASSERT_TRUE(ddp.AllReduceGradients().ok());
    EXPECT_FALSE(unused->weight.grad().defined()) << "step " << step;
    EXPECT_FALSE(unused->bias.grad().defined()) << "step " << step;
    EXPECT_TRUE(used->weight.grad().defined());
  }
  EXPECT_EQ(ddp.buckets_reduced(), 2);
}

TEST(DataParallelAlone, WithoutACommunicatorReduceAloneUsesOneOfItsOwn) {
  ASSERT_EQ(dist::DefaultCommunicator(), nullptr) << "this test needs a process without a World";
  torch::nn::Sequential model(torch::nn::Linear(5, 4), torch::nn::ReLU(), torch::nn::Linear(4, 3));
  DataParallel plain(*model, {.bucket_bytes = 64});
  ASSERT_TRUE(plain.status().ok()) << plain.status();
  EXPECT_EQ(plain.communicator(), nullptr);
  EXPECT_FALSE(plain.reduces());
  DataParallel alone(*model, {.bucket_bytes = 64, .reduce_alone = true});
  ASSERT_TRUE(alone.status().ok()) << alone.status();
  ASSERT_NE(alone.communicator(), nullptr);
  EXPECT_EQ(alone.communicator()->backend(), "single");
  EXPECT_TRUE(alone.reduces());
  model->forward(torch::ones({2, 5})).sum().backward();
  const torch::Tensor before = model->parameters()[0].grad().clone();
  ASSERT_TRUE(alone.AllReduceGradients().ok());
  EXPECT_EQ(alone.buckets_reduced(), static_cast<int64_t>(alone.num_buckets()));
  EXPECT_TRUE(torch::equal(model->parameters()[0].grad(), before));
}

TEST(DataParallelAlone, ABucketSizeBelowOneByteIsRefusedNamingIt) {
  dist::SingleProcessCommunicator c;
  torch::nn::Linear model(3, 2);
  for (int64_t bad : {int64_t{0}, int64_t{-5}}) {
    DataParallel ddp(*model, {.bucket_bytes = bad, .comm = &c});
    ASSERT_FALSE(ddp.status().ok());
    EXPECT_EQ(ddp.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(ddp.status().message()),
                ::testing::HasSubstr(absl::StrCat("bucket_bytes = ", bad, "; allowed: >= 1")));
    model->forward(torch::ones({1, 3})).sum().backward();
    EXPECT_FALSE(ddp.AllReduceGradients().ok()) << "a refused DataParallel must not average silently";
  }
}

TEST(DataParallelCarry, ProposeAheadOutsideTheStepIsAnError) {
  Engine engine([](Engine&) {});
  absl::StatusOr<absl::Span<const double>> mine = engine.ProposeAhead(1.0);
  ASSERT_FALSE(mine.ok());
  EXPECT_THAT(std::string(mine.status().message()), ::testing::HasSubstr("inside this engine's step function"));
  EXPECT_FALSE(engine.CarryAgreement({}).ok());
}

}  // namespace
}  // namespace ember
