#include "tests/distributed/communicator_checks.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "handlers/early_stopping.h"
#include "handlers/terminate_on_nan.h"

namespace ember::dist::testing {
namespace {

absl::Time Deadline() { return absl::Now() + absl::Seconds(60); }

}  // namespace

void CheckAllReduce(Communicator& comm) {
  const int n = comm.world_size();
  const int r = comm.rank();
  std::vector<double> d = {static_cast<double>(r + 1), -static_cast<double>(r), 0.5};
  ASSERT_TRUE(comm.AllReduce(absl::MakeSpan(d), ReduceOp::kSum, Deadline()).ok());
  EXPECT_EQ(d[0], n * (n + 1) / 2.0);
  EXPECT_EQ(d[1], -(n * (n - 1) / 2.0));
  EXPECT_EQ(d[2], 0.5 * n);
  std::vector<float> f = {static_cast<float>(r), static_cast<float>(-r)};
  ASSERT_TRUE(comm.AllReduce(absl::MakeSpan(f), ReduceOp::kMax, Deadline()).ok());
  EXPECT_EQ(f[0], n - 1);
  EXPECT_EQ(f[1], 0);
  std::vector<double> m = {static_cast<double>(r)};
  ASSERT_TRUE(comm.AllReduce(absl::MakeSpan(m), ReduceOp::kMin, Deadline()).ok());
  EXPECT_EQ(m[0], 0);
  std::vector<double> empty;
  EXPECT_TRUE(comm.AllReduce(absl::MakeSpan(empty), ReduceOp::kSum, Deadline()).ok());
}

void CheckAllGather(Communicator& comm) {
  const int n = comm.world_size();
  std::vector<double> send = {static_cast<double>(comm.rank()), 10.0 * comm.rank()};
  std::vector<double> recv(2 * static_cast<size_t>(n), -1);
  ASSERT_TRUE(comm.AllGather(send, absl::MakeSpan(recv), Deadline()).ok());
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(recv[2 * i], i);
    EXPECT_EQ(recv[2 * i + 1], 10.0 * i);
  }
  std::vector<double> wrong(1);
  EXPECT_EQ(comm.AllGather(send, absl::MakeSpan(wrong), Deadline()).code(), absl::StatusCode::kInvalidArgument);
}

void CheckBroadcast(Communicator& comm) {
  const int root = comm.world_size() - 1;
  for (size_t size : {size_t{0}, size_t{5}, size_t{1} << 20}) {
    std::string bytes;
    if (comm.rank() == root) {
      bytes.resize(size);
      for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(i * 31 + 7);
    } else {
      bytes = "stale";
    }
    ASSERT_TRUE(comm.Broadcast(bytes, root, Deadline()).ok());
    ASSERT_EQ(bytes.size(), size);
    for (size_t i = 0; i < size; i += 997) EXPECT_EQ(bytes[i], static_cast<char>(i * 31 + 7));
  }
  std::string b;
  EXPECT_EQ(comm.Broadcast(b, comm.world_size(), Deadline()).code(), absl::StatusCode::kInvalidArgument);
}

void CheckBarrier(Communicator& comm) {
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(comm.Barrier(Deadline()).ok());
}

void CheckEngineAgreement(Communicator& comm) {
  const int n = comm.world_size();
  const int r = comm.rank();
  std::vector<int> data = {0, 1, 2, 3};
  // TerminateOnNan: only the last rank sees NaN, at iteration 3.
  {
    Engine engine([&](Engine& e, const int&) {
      return (r == n - 1 && e.state().iteration == 3) ? std::numeric_limits<double>::quiet_NaN() : 1.0;
    });
    engine.set_communicator(&comm);
    engine.set_verify_agreement(true);
    TerminateOnNan ton;
    engine.On(Events::IterationCompleted(), ton);
    ASSERT_TRUE(engine.Run(data, {.max_epochs = 3}).ok());
    EXPECT_EQ(engine.state().iteration, 3);
    EXPECT_TRUE(engine.should_terminate());
    EXPECT_EQ(ton.bad_ranks(), std::vector<int>{n - 1});
  }
  // EarlyStopping on per-rank scores: rank r's score is scores[epoch] + r; the MEAN makes every
  // rank see the same sequence and stop at the same epoch; plus TerminateOnNan on the same
  // firing: still one collective per firing.
  {
    std::vector<double> scores = {0.5, 0.6, 0.55, 0.58, 0.59, 0.57, 0.9};
    Engine trainer([](Engine&, const int&) { return 1.0; });
    trainer.set_communicator(&comm);
    auto es = EarlyStopping::Create(
        {.patience = 3, .score_function = [&](const Engine& e) { return scores[e.state().epoch - 1] + 0.01 * r; }},
        trainer);
    ASSERT_TRUE(es.ok());
    trainer.On(Events::EpochCompleted(), **es);
    trainer.On(Events::EpochCompleted(), TerminateOnNan());
    const int64_t before = comm.collectives();
    ASSERT_TRUE(trainer.Run(data, {.max_epochs = 7}).ok());
    EXPECT_EQ(trainer.state().epoch, 5);
    EXPECT_EQ(comm.collectives() - before, 5);  // one per EPOCH_COMPLETED, two handlers fused
    EXPECT_EQ(trainer.agreements(), 5);
  }
}

}  // namespace ember::dist::testing
