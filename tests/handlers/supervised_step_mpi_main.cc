// Runs under mpirun (2 and 4 ranks, inside bazel test; supervised_step_mpi_test.sh):
//   supervised_step_mpi           every rank trains with SupervisedStep (K = 2 and K = 3, clipping
//                                 on) through DataParallel (overlap off) and an Engine with
//                                 TerminateOnNan and Preemption, each rank on its own data, and
//                                 checks: one gradient reduce per window (its buckets, carrying the
//                                 engine's agreement) and one agreement in each other micro-batch
//                                 iteration, the same collectives per iteration on every rank;
//                                 the same pre-clip norm and clip factor on every rank, bitwise;
//                                 bitwise-equal parameters on every rank; and parameters equal to
//                                 a one-process run (K = 1) over each window's concatenated data
//                                 of every rank, within float tolerance.
//                                 With a GradScaler, one rank's overflow skips the step on every
//                                 rank (the decision rides in the gradient all-reduce).
//   supervised_step_mpi mismatch  rank 1 asks for another K: Create fails on every rank, naming
//                                 accumulation_steps and each rank's value.
// Each rank prints "rank R of N: PASSED" or "rank R: <error>".
#include <mpi.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "distributed/mpi_communicator.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/parallel/grad_scaler.h"
#include "handlers/parallel/supervised_step.h"
#include "handlers/preemption.h"
#include "handlers/terminate_on_nan.h"
#include "tests/mpi/rank_main.h"

namespace {

using ember::testing::SameOnEveryRank;

constexpr int kMicro = 4;     // samples per micro-batch per rank
constexpr int kWindows = 3;   // windows applied; one more micro-batch is the trailing incomplete window
constexpr double kMaxNorm = 0.3;

struct NetImpl : torch::nn::Module {
  NetImpl()
      : l1(register_module("l1", torch::nn::Linear(16, 32))),
        l2(register_module("l2", torch::nn::Linear(32, 32))),
        l3(register_module("l3", torch::nn::Linear(32, 5))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return l3->forward(torch::relu(l2->forward(torch::relu(l1->forward(x)))));
  }
  torch::nn::Linear l1, l2, l3;
};
TORCH_MODULE(Net);

struct Batch {
  torch::Tensor x, y;
};

torch::Tensor Flat(Net& net) {
  std::vector<torch::Tensor> parts;
  for (const auto& p : net->parameters()) parts.push_back(p.detach().reshape({-1}));
  return torch::cat(parts).contiguous();
}

ember::SupervisedStep::LossFn CrossEntropy() {
  return [](const torch::Tensor& p, const torch::Tensor& y) { return torch::nn::functional::cross_entropy(p, y); };
}

void TrainAndCheck(int64_t k) {
  ember::dist::Communicator& comm = ember::testing::MpiWorld();
  const int r = comm.rank(), n = comm.world_size();
  // The data of window w: n * k micro-batches; rank r's j-th micro-batch of it is number r * k + j.
  torch::manual_seed(99);
  const int64_t per_window = static_cast<int64_t>(n) * k * kMicro;
  const torch::Tensor all_x = torch::randn({per_window * (kWindows + 1), 16}) * 2;
  const torch::Tensor all_y = torch::randint(0, 5, {per_window * (kWindows + 1)});
  std::vector<Batch> mine;
  for (int64_t i = 0; i < k * kWindows + 1; ++i) {  // the last micro-batch starts a window never applied
    const int64_t w = i / k, j = i % k;
    const int64_t at = w * per_window + (r * k + j) * kMicro;
    mine.push_back({all_x.slice(0, at, at + kMicro), all_y.slice(0, at, at + kMicro)});
  }

  torch::manual_seed(1000 + r);  // every rank initialises differently; DataParallel broadcasts rank 0's
  Net net;
  ember::DataParallel ddp(*net, {.bucket_bytes = 2048, .comm = &comm, .overlap = false});
  ASSERT_TRUE(ddp.status().ok()) << ddp.status();
  ASSERT_GT(ddp.num_buckets(), 1u);
  Net single;  // the one-process reference, from the broadcast parameters
  {
    torch::NoGradGuard no_grad;
    auto src = net->parameters(), dst = single->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  }
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.5).momentum(0.9));
  auto step = ember::SupervisedStep::Create([&](const torch::Tensor& x) { return net->forward(x); }, opt, CrossEntropy(),
                                            {.accumulation_steps = k, .clip_grad_norm = kMaxNorm, .data_parallel = &ddp});
  ASSERT_TRUE(step.ok()) << step.status();

  std::vector<double> norms, factors;
  ember::Engine trainer([&](ember::Engine& e, const Batch& b) -> absl::StatusOr<double> {
    EMBER_ASSIGN_OR_RETURN(double out, (**step)(e, b.x, b.y));
    if ((*step)->stepped()) {
      norms.push_back(*(*step)->last_window().grad_norm);
      factors.push_back((*step)->last_window().clip_factor);
    }
    return out;
  });
  trainer.set_communicator(&comm);
  ember::TerminateOnNan ton;
  ember::Preemption preemption;
  trainer.On(ember::Events::IterationCompleted(), ton);
  trainer.On(ember::Events::IterationCompleted(), preemption);
  std::vector<double> at_start;  // comm.collectives() at each ITERATION_STARTED, then at the end
  trainer.On(ember::Events::IterationStarted(),
             [&](ember::Engine&) { at_start.push_back(static_cast<double>(comm.collectives())); });
  absl::Status s = trainer.Run(mine, {.max_epochs = 1});
  at_start.push_back(static_cast<double>(comm.collectives()));
  ASSERT_TRUE(s.ok()) << s;
  const int64_t iterations = k * kWindows + 1;
  ASSERT_EQ(trainer.state().iteration, iterations);

  // One reduce per window, and only in the window's last iteration.
  EXPECT_EQ(ddp.steps(), kWindows);
  EXPECT_EQ(ddp.buckets_reduced(), kWindows * static_cast<int64_t>(ddp.num_buckets()));
  EXPECT_EQ((*step)->optimizer_steps(), kWindows);
  EXPECT_EQ(trainer.carried_agreements(), kWindows) << "the window's reduce did not carry the agreement";
  EXPECT_EQ(trainer.agreements(), iterations - kWindows) << "a micro-batch iteration did not agree";
  std::vector<double> per_iteration;
  for (size_t i = 0; i + 1 < at_start.size(); ++i) {
    const double c = at_start[i + 1] - at_start[i];
    per_iteration.push_back(c);
    const int64_t it = static_cast<int64_t>(i) + 1;
    EXPECT_EQ(c, it % k == 0 ? static_cast<double>(ddp.num_buckets()) : 1.0) << "collectives of iteration " << it;
  }
  EXPECT_EQ(SameOnEveryRank(comm, per_iteration, "the collectives per iteration"), absl::OkStatus());

  // Clipping on the averaged gradients: the same norm and factor on every rank, and it clipped.
  ASSERT_EQ(factors.size(), static_cast<size_t>(kWindows));
  EXPECT_EQ((*step)->clipped_steps(), kWindows) << "max norm " << kMaxNorm << " did not clip every window";
  EXPECT_EQ(SameOnEveryRank(comm, norms, "the pre-clip norm"), absl::OkStatus());
  EXPECT_EQ(SameOnEveryRank(comm, factors, "the clip factor"), absl::OkStatus());

  // Bitwise-equal parameters on every rank: rank 0's bytes against this rank's.
  const torch::Tensor flat = Flat(net);
  const std::string local(static_cast<const char*>(flat.data_ptr()), flat.numel() * flat.element_size());
  std::string root = local;
  ASSERT_TRUE(comm.Broadcast(root, 0, absl::Now() + absl::Seconds(60)).ok());
  EXPECT_TRUE(root == local) << "rank " << r << "'s parameters differ from rank 0's";

  // One process, K = 1, over each window's data of every rank: the same within float tolerance
  // (every micro-batch has the same size, so the mean of the means is the mean).
  torch::optim::SGD single_opt(single->parameters(), torch::optim::SGDOptions(0.5).momentum(0.9));
  auto single_step = ember::SupervisedStep::Create([&](const torch::Tensor& x) { return single->forward(x); }, single_opt,
                                                   CrossEntropy(), {.accumulation_steps = 1, .clip_grad_norm = kMaxNorm});
  ASSERT_TRUE(single_step.ok());
  std::vector<Batch> windows;
  for (int64_t w = 0; w < kWindows; ++w) {
    windows.push_back({all_x.slice(0, w * per_window, (w + 1) * per_window),
                       all_y.slice(0, w * per_window, (w + 1) * per_window)});
  }
  std::vector<double> single_norms;
  ember::Engine one([&](ember::Engine& e, const Batch& b) -> absl::StatusOr<double> {
    EMBER_ASSIGN_OR_RETURN(double out, (**single_step)(e, b.x, b.y));
    single_norms.push_back(*(*single_step)->last_window().grad_norm);
    return out;
  });
  ASSERT_TRUE(one.Run(windows, {.max_epochs = 1}).ok());
  for (int64_t w = 0; w < kWindows; ++w) {
    EXPECT_NEAR(norms[w], single_norms[w], 1e-5 * single_norms[w]) << "window " << w;
  }
  const torch::Tensor ref = Flat(single);
  EXPECT_TRUE(torch::allclose(flat, ref, 1e-4, 1e-5))
      << "K = " << k << ": max difference from the one-process run " << (flat - ref).abs().max().item<double>();
  std::fprintf(stderr, "rank %d: K=%lld %zu buckets, norms %.6f %.6f %.6f, factors %.6f %.6f %.6f\n", r,
               static_cast<long long>(k), ddp.num_buckets(), norms[0], norms[1], norms[2], factors[0], factors[1],
               factors[2]);
}

TEST(SupervisedStepMpi, K2OneReducePerWindowSameClipEveryRank) { TrainAndCheck(2); }
TEST(SupervisedStepMpi, K3OneReducePerWindowSameClipEveryRank) { TrainAndCheck(3); }

// GradScaler (issue 28.5): the last rank's gradients overflow at iteration 3 only (its micro-batch
// holds 3e38); every rank's averaged gradients are then non-finite, so every rank skips that step
// and backs its scale off, with no collective of its own (the same reduces as without a scaler),
// and the ranks keep bitwise-equal, finite parameters.
TEST(SupervisedStepMpi, GradScalerOverflowOnOneRankSkipsTheStepOnEveryRank) {
  ember::dist::Communicator& comm = ember::testing::MpiWorld();
  torch::manual_seed(5 + comm.rank());
  Net net;
  ember::DataParallel ddp(*net, {.comm = &comm, .overlap = false});
  ASSERT_TRUE(ddp.status().ok()) << ddp.status();
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
  auto scaler = ember::GradScaler::Create({.init_scale = 1024, .growth_interval = 2});
  ASSERT_TRUE(scaler.ok());
  auto step = ember::SupervisedStep::Create([&](const torch::Tensor& x) { return net->forward(x); }, opt, CrossEntropy(),
                                            {.data_parallel = &ddp, .grad_scaler = scaler->get()});
  ASSERT_TRUE(step.ok()) << step.status();
  torch::manual_seed(77 + comm.rank());  // each rank its own data
  std::vector<Batch> data;
  for (int i = 0; i < 5; ++i) data.push_back({torch::randn({kMicro, 16}), torch::randint(0, 5, {kMicro})});
  if (comm.rank() == comm.world_size() - 1) data[2].x[0][0] = 3e38f;
  std::vector<double> skipped_at;
  ember::Engine trainer([&](ember::Engine& e, const Batch& b) -> absl::StatusOr<double> {
    EMBER_ASSIGN_OR_RETURN(double out, (**step)(e, b.x, b.y));
    if ((*step)->last_window().skipped && (*step)->last_window().iteration == e.state().iteration) {
      skipped_at.push_back(static_cast<double>(e.state().iteration));
    }
    return out;
  });
  trainer.set_communicator(&comm);
  const int64_t collectives_before = comm.collectives();
  ASSERT_TRUE(trainer.Run(data, {.max_epochs = 1}).ok());
  EXPECT_EQ(skipped_at, std::vector<double>{3});
  EXPECT_EQ((*scaler)->skipped_steps(), 1);
  // 1024: two successes grow it to 2048, the overflow halves it to 1024, two more grow it to 2048.
  EXPECT_EQ((*scaler)->scale(), 2048.0);
  EXPECT_TRUE(torch::isfinite(Flat(net)).all().item<bool>());
  const torch::Tensor flat = Flat(net).to(torch::kFloat64);
  std::vector<double> params(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
  EXPECT_EQ(SameOnEveryRank(comm, params, "the parameters"), absl::OkStatus());
  const std::vector<double> scaler_state = {(*scaler)->scale(), static_cast<double>((*scaler)->growth_tracker()),
                                            static_cast<double>(comm.collectives() - collectives_before)};
  EXPECT_EQ(SameOnEveryRank(comm, scaler_state, "the scale, the growth tracker and the number of collectives"),
            absl::OkStatus());
}

// "mismatch": rank 1 asks for accumulation_steps 3, the others 2. "mismatch_lr": rank 1's SGD has
// lr 0.05 and momentum 0.9, the others' lr 0.1 and momentum 0.
int Mismatch(const std::string& kind) {
  ember::dist::Communicator& comm = ember::testing::MpiWorld();
  Net net;
  ember::DataParallel ddp(*net, {.comm = &comm, .overlap = false});
  if (!ddp.status().ok()) return 2;
  const bool odd_lr = kind == "mismatch_lr" && comm.rank() == 1;
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(odd_lr ? 0.05 : 0.1).momentum(odd_lr ? 0.9 : 0));
  const int steps = kind == "mismatch" && comm.rank() == 1 ? 3 : 2;
  auto step = ember::SupervisedStep::Create([&](const torch::Tensor& x) { return net->forward(x); }, opt, CrossEntropy(),
                                            {.accumulation_steps = steps, .data_parallel = &ddp});
  std::fprintf(stderr, "rank %d: %s\n", comm.rank(), step.ok() ? "OK" : step.status().ToString().c_str());
  std::fflush(stderr);
  return ember::testing::ExitLettingOthersReport(step.ok() ? 0 : 1);
}

}  // namespace

int main(int argc, char** argv) {
  return ember::testing::RunTestsOnEveryRank(
      argc, argv, [](ember::dist::Communicator&, int argc, char** argv) -> std::optional<int> {
        if (argc == 2 && std::string(argv[1]).rfind("mismatch", 0) == 0) return Mismatch(argv[1]);
        return std::nullopt;
      });
}
