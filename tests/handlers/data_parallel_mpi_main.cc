// Runs under mpirun (2 and 4 ranks, inside bazel test; data_parallel_mpi_test.sh):
//   data_parallel_mpi            every rank checks DataParallel on MPI_COMM_WORLD: ranks that
//                                initialise differently are made equal by the broadcast; the
//                                overlapped reduce (buckets started by backward's hooks) equals
//                                the non-overlapped one bitwise and a one-process run on the
//                                concatenated batch within float tolerance, for 3 SGD steps; a
//                                parameter that gets a gradient on some ranks only is averaged
//                                as zeros from the others.
//   data_parallel_mpi stall K    rank K stalls inside backward for 10 s; every other rank must
//                                fail within the 2 s deadline with an error naming the step and
//                                the bucket.
// Each rank prints "rank R of N: PASSED" or "rank R: <error>".
#include <mpi.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/time/clock.h"
#include "distributed/mpi_communicator.h"
#include "gtest/gtest.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "handlers/parallel/data_parallel.h"
#include "handlers/parallel/sharded_source.h"
#include "handlers/preemption.h"
#include "handlers/terminate_on_nan.h"
#include "tests/mpi/rank_main.h"

namespace {

constexpr int kPerRank = 8;

struct NetImpl : torch::nn::Module {
  NetImpl()
      : l1(register_module("l1", torch::nn::Linear(32, 64))),
        l2(register_module("l2", torch::nn::Linear(64, 64))),
        l3(register_module("l3", torch::nn::Linear(64, 10))),
        unused(register_parameter("unused", torch::zeros({5}))) {}
  torch::Tensor forward(const torch::Tensor& x, const std::function<void(torch::Tensor&)>& on_hidden = nullptr) {
    torch::Tensor h = torch::relu(l1->forward(x));
    if (on_hidden) on_hidden(h);
    return l3->forward(torch::relu(l2->forward(h)));
  }
  torch::nn::Linear l1, l2, l3;
  torch::Tensor unused;  // takes part in the loss on even ranks only
};
TORCH_MODULE(Net);

void CopyParams(Net& to, Net& from) {
  torch::NoGradGuard no_grad;
  auto src = from->parameters();
  auto dst = to->parameters();
  for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
}

double Checksum(Net& net) {
  double s = 0;
  for (const auto& p : net->parameters()) s += p.sum().item<double>() + p.abs().sum().item<double>() * 1e-3;
  return s;
}

struct Data {
  torch::Tensor x, y;
};

Data FullBatch(int world) {
  torch::manual_seed(123);
  return {torch::randn({kPerRank * world, 32}), torch::randint(0, 10, {kPerRank * world})};
}

TEST(DataParallelMpi, OverlapEqualsNoOverlapAndOneProcess) {
  ember::dist::Communicator& comm = ember::testing::MpiWorld();
  const int r = comm.rank(), n = comm.world_size();
  torch::manual_seed(1000 + r);  // every rank initialises differently
  Net a;
  const double before = Checksum(a);
  ember::DataParallel ddp_a(*a, {.bucket_bytes = 4096, .comm = &comm});
  ASSERT_TRUE(ddp_a.status().ok()) << ddp_a.status();
  // The broadcast made every rank's parameters rank 0's.
  double sums[2] = {Checksum(a), -Checksum(a)};
  ASSERT_TRUE(comm.AllReduce(absl::MakeSpan(sums, 2), ember::dist::ReduceOp::kMax, absl::Now() + absl::Seconds(60)).ok());
  EXPECT_EQ(sums[0], -sums[1]) << "parameters differ across ranks after the broadcast";
  if (r != 0) {
    EXPECT_NE(before, Checksum(a)) << "this rank's initial parameters were not replaced";
  }

  Net overlap, plain, single;
  CopyParams(overlap, a);
  CopyParams(plain, a);
  CopyParams(single, a);
  ember::DataParallel ddp_o(*overlap, {.bucket_bytes = 4096, .comm = &comm, .overlap = true});
  ember::DataParallel ddp_p(*plain, {.bucket_bytes = 4096, .comm = &comm, .overlap = false});
  ASSERT_TRUE(ddp_o.status().ok() && ddp_p.status().ok());
  ASSERT_GT(ddp_o.num_buckets(), 3u);
  torch::optim::SGD opt_o(overlap->parameters(), 0.1), opt_p(plain->parameters(), 0.1), opt_s(single->parameters(), 0.1);
  const Data full = FullBatch(n);
  const torch::Tensor x = full.x.slice(0, r * kPerRank, (r + 1) * kPerRank);
  const torch::Tensor y = full.y.slice(0, r * kPerRank, (r + 1) * kPerRank);
  for (int step = 1; step <= 3; ++step) {
    for (auto [net, ddp, opt] : {std::make_tuple(&overlap, &ddp_o, &opt_o), std::make_tuple(&plain, &ddp_p, &opt_p)}) {
      opt->zero_grad();
      torch::Tensor loss = torch::nn::functional::cross_entropy((*net)->forward(x), y);
      if (r % 2 == 0) loss = loss + (*net)->unused.sum();
      loss.backward();
      ASSERT_TRUE(ddp->AllReduceGradients().ok()) << "step " << step;
    }
    opt_s.zero_grad();
    torch::nn::functional::cross_entropy(single->forward(full.x), full.y).backward();
    auto po = overlap->named_parameters(), pp = plain->named_parameters(), ps = single->named_parameters();
    for (const auto& item : po) {
      const std::string& name = item.key();
      const torch::Tensor& g = item.value().grad();
      ASSERT_TRUE(g.defined()) << name;
      EXPECT_TRUE(torch::equal(g, pp[name].grad())) << name << " at step " << step << ": overlap and no overlap differ";
      if (name == "unused") {
        // Even ranks contribute ones, odd ranks zeros.
        const float expected = static_cast<float>((n + 1) / 2) / static_cast<float>(n);
        EXPECT_TRUE(torch::allclose(g, torch::full({5}, expected))) << g;
      } else {
        EXPECT_TRUE(torch::allclose(g, ps[name].grad(), 1e-5, 1e-6)) << name << " at step " << step << ": max diff "
                                                                      << (g - ps[name].grad()).abs().max().item<float>();
      }
    }
    opt_o.step();
    opt_p.step();
    opt_s.step();
  }
  EXPECT_GT(ddp_o.buckets_started_early(), 0) << "no bucket was started during backward";
  EXPECT_EQ(ddp_p.buckets_started_early(), 0);
  EXPECT_EQ(ddp_o.buckets_reduced(), 3 * static_cast<int64_t>(ddp_o.num_buckets()));
  EXPECT_EQ(ddp_o.staged_buckets(), 0);
  EXPECT_EQ(ddp_o.steps(), 3);
  std::fprintf(stderr, "rank %d: %zu buckets, %lld started during backward over 3 steps\n", r, ddp_o.num_buckets(),
               static_cast<long long>(ddp_o.buckets_started_early()));
}

TEST(DataParallelMpi, PreemptionAndNanFlagsRideTheLastBucket) {
  // Rank n-1 is signalled inside its step 4: every rank stops at iteration 4, and no iteration
  // costs more collectives than its gradient buckets.
  ember::dist::Communicator& comm = ember::testing::MpiWorld();
  const int r = comm.rank(), n = comm.world_size();
  torch::manual_seed(11);
  Net net;
  ember::DataParallel ddp(*net, {.bucket_bytes = 4096, .comm = &comm});
  ASSERT_TRUE(ddp.status().ok()) << ddp.status();
  torch::optim::SGD opt(net->parameters(), 0.1);
  const Data full = FullBatch(n);
  const torch::Tensor x = full.x.slice(0, r * kPerRank, (r + 1) * kPerRank);
  const torch::Tensor y = full.y.slice(0, r * kPerRank, (r + 1) * kPerRank);
  ember::Engine trainer([&](ember::Engine& e) -> absl::StatusOr<double> {
    opt.zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(net->forward(x), y);
    loss.backward();
    const double out = loss.item<double>();
    if (r == n - 1 && e.state().iteration == 4) ember::Preemption::Request();
    EMBER_RETURN_IF_ERROR(ddp.AllReduceGradients(e, out));
    opt.step();
    return out;
  });
  trainer.set_communicator(&comm);
  ember::TerminateOnNan ton;
  ember::Preemption preemption;
  trainer.On(ember::Events::IterationCompleted(), ton);
  trainer.On(ember::Events::IterationCompleted(), preemption);
  const int64_t before = comm.collectives();
  absl::Status s = trainer.Run({.max_epochs = 1, .epoch_length = 10});
  const int64_t collectives = comm.collectives() - before;
  ember::Preemption::Clear();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(trainer.state().iteration, 4);
  EXPECT_EQ(trainer.outcome().terminated_by, ember::Preemption::kName);
  EXPECT_TRUE(preemption.preempted());
  EXPECT_EQ(trainer.agreements(), 0) << "an iteration agreed in a collective of its own";
  EXPECT_EQ(trainer.carried_agreements(), 4);
  // The steps cost exactly their buckets; the Run agreed once at its start (Engine::Run).
  EXPECT_EQ(collectives, 4 * static_cast<int64_t>(ddp.num_buckets()) + 1);
}

int Stall(int victim) {
  ember::dist::Communicator& comm = ember::testing::MpiWorld();
  torch::manual_seed(7);
  Net net;
  ember::DataParallel ddp(*net, {.bucket_bytes = 4096, .deadline = absl::Seconds(2), .comm = &comm});
  if (!ddp.status().ok()) return 2;
  const Data full = FullBatch(comm.world_size());
  const absl::Time start = absl::Now();
  torch::Tensor loss = torch::nn::functional::cross_entropy(net->forward(full.x, [&](torch::Tensor& h) {
    if (comm.rank() == victim) {
      h.register_hook([](torch::Tensor g) {
        absl::SleepFor(absl::Seconds(10));  // stalls in the middle of backward
        return g;
      });
    }
  }), full.y);
  loss.backward();
  absl::Status s = ddp.AllReduceGradients();
  std::fprintf(stderr, "rank %d: %s after %.1f s\n", comm.rank(), s.ToString().c_str(),
               absl::ToDoubleSeconds(absl::Now() - start));
  std::fflush(stderr);
  // mpirun tears the whole job down as soon as one rank exits non-zero; a rank that reached its
  // deadline a little later than the others (4 ranks on 2 cores start their collective at
  // different times) would be killed before it could report. Linger so that every rank reports.
  if (comm.rank() != victim) absl::SleepFor(absl::Seconds(3));
  return s.ok() ? 0 : 1;
}

}  // namespace

// `before_world`: DataParallel and ShardedSource created inside an mpirun launch before any
// World (no MPI_Init, no default communicator): both refuse, instead of training alone on each rank.
int BeforeWorld() {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  auto net = torch::nn::Linear(4, 2);
  ember::DataParallel ddp(*net);
  net->forward(torch::ones({2, 4})).sum().backward();
  const absl::Status step = ddp.AllReduceGradients();
  std::printf("rank %s: DataParallel: %s\n", rank != nullptr ? rank : "?", step.ToString().c_str());
  auto sampler = ember::ShardedSampler::Create({.dataset_size = 64, .global_batch = 8});
  std::printf("rank %s: ShardedSource: %s\n", rank != nullptr ? rank : "?", sampler.status().ToString().c_str());
  return step.ok() || sampler.ok() ? 1 : 0;
}

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "before_world") return BeforeWorld();
  return ember::testing::RunTestsOnEveryRank(
      argc, argv, [](ember::dist::Communicator&, int argc, char** argv) -> std::optional<int> {
        if (argc == 3 && std::string(argv[1]) == "stall") return Stall(std::atoi(argv[2]));
        return std::nullopt;
      });
}
