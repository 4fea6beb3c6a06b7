// What defines a run is agreed once at start, in the library's handlers: DataParallel (every
// parameter's and buffer's name, shape, dtype; bucket_bytes, overlap) at construction, and
// ModelCheckpoint / Checkpoint (save_on_rank, n_saved, the object keys, ...) at creation. On fake
// worlds of 2 and 4 ranks where the last rank differs, every rank fails with the same error
// naming the setting and each rank's value, the communicator is poisoned, and nothing is
// written (the checkpoint directory is never created). ShardedSource: sharded_source_test.
#include <filesystem>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "base/file_system.h"
#include "base/testing/temp_dir.h"
#include "distributed/default_communicator.h"
#include "distributed/testing/fake_world.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "handlers/checkpoint/checkpoint.h"
#include "handlers/checkpoint/in_memory_saver.h"
#include "handlers/checkpoint/model_checkpoint.h"
#include "handlers/parallel/data_parallel.h"

namespace ember {
namespace {

using ::testing::HasSubstr;

struct NetImpl : torch::nn::Module {
  NetImpl(int a, int b) : l1(register_module("l1", torch::nn::Linear(a, b))), l2(register_module("l2", torch::nn::Linear(b, a))) {}
  torch::nn::Linear l1, l2;
};
TORCH_MODULE(Net);

std::string Others(int n) { return n == 2 ? "rank 0" : "ranks 0-2"; }
std::string Last(int n) { return n == 2 ? "rank 1" : "rank 3"; }

// Each rank's DataParallel status and the outcome of a barrier after it.
void ExpectDataParallelFails(int n, const std::function<void(int, Net&, DataParallelOptions&)>& change,
                             const std::string& expected) {
  dist::testing::FakeWorld world(n);
  std::vector<absl::Status> got(n), after(n);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    Net net(4, 6);
    DataParallelOptions o{.bucket_bytes = 1024, .deadline = absl::Seconds(20), .comm = &c};
    if (c.rank() == n - 1) change(c.rank(), net, o);
    DataParallel ddp(*net, o);
    got[c.rank()] = ddp.status();
    after[c.rank()] = c.Barrier(absl::Now() + absl::Seconds(20));
  });
  for (int r = 0; r < n; ++r) {
    SCOPED_TRACE(r);
    EXPECT_EQ(got[r].code(), absl::StatusCode::kInvalidArgument) << got[r];
    EXPECT_EQ(std::string(got[r].message()), expected);
    EXPECT_THAT(std::string(after[r].message()), HasSubstr(expected)) << "poisoned";
  }
}

class StartAgreement : public ::testing::TestWithParam<int> {};

TEST_P(StartAgreement, DataParallelComparesEveryParameterNotJustTheBytes) {
  const int n = GetParam();
  // The same number of bytes, other shapes (Linear(6, 4) then (4, 6)): the broadcast alone would
  // not see it.
  ExpectDataParallelFails(
      n, [](int, Net& net, DataParallelOptions&) { net = Net(6, 4); },
      "DataParallel parameters differ across ranks: parameter l1.weight is Float[6,4] on " + Others(n) +
          ", Float[4,6] on " + Last(n) + "; parameter l1.bias is Float[6] on " + Others(n) + ", Float[4] on " +
          Last(n) + "; parameter l2.weight is Float[4,6] on " + Others(n) + ", Float[6,4] on " + Last(n) +
          "; parameter l2.bias is Float[4] on " + Others(n) + ", Float[6] on " + Last(n));
}

TEST_P(StartAgreement, DataParallelComparesDtypesAndOptions) {
  const int n = GetParam();
  ExpectDataParallelFails(
      n, [](int, Net&, DataParallelOptions& o) { o.bucket_bytes = 2048; },
      "DataParallel parameters differ across ranks: bucket_bytes is 1024 on " + Others(n) + ", 2048 on " + Last(n));
  ExpectDataParallelFails(
      n, [](int, Net& net, DataParallelOptions&) { net->l2->bias.set_requires_grad(false); },
      "DataParallel parameters differ across ranks: parameter l2.bias is Float[4] on " + Others(n) +
          ", Float[4] (no grad) on " + Last(n));
  ExpectDataParallelFails(
      n, [](int, Net& net, DataParallelOptions&) { net->to(torch::kFloat64); },
      "DataParallel parameters differ across ranks: parameter l1.weight is Float[6,4] on " + Others(n) +
          ", Double[6,4] on " + Last(n) + "; parameter l1.bias is Float[6] on " + Others(n) + ", Double[6] on " +
          Last(n) + "; parameter l2.weight is Float[4,6] on " + Others(n) + ", Double[4,6] on " + Last(n) +
          "; parameter l2.bias is Float[4] on " + Others(n) + ", Double[4] on " + Last(n));
}

TEST_P(StartAgreement, DataParallelWithTheSameModelAgreesAndBroadcasts) {
  const int n = GetParam();
  dist::testing::FakeWorld world(n);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    torch::manual_seed(c.rank());
    Net net(4, 6);
    DataParallel ddp(*net, {.deadline = absl::Seconds(20), .comm = &c});
    EXPECT_TRUE(ddp.status().ok()) << ddp.status();
    EXPECT_EQ(c.collectives(), 2) << "the agreement and the broadcast";
  });
}

// ModelCheckpoint on every rank with rank r's options; each rank's outcome.
std::vector<absl::Status> CreateCheckpoints(int n, const std::string& dir,
                                            const std::function<void(int, ModelCheckpointOptions&, std::string&)>& change) {
  dist::testing::FakeWorld world(n);
  std::vector<absl::Status> got(n), after(n);
  world.RunOnEveryRank([&](dist::Communicator& c) {
    torch::nn::Linear model(2, 2);
    ModelCheckpointOptions o{.disk = {.dirname = dir}, .checkpoint = {.filename_prefix = "run", .n_saved = 2}};
    std::string key = "model";
    change(c.rank(), o, key);
    got[c.rank()] = ModelCheckpoint::Create(o, {{key, model}}, &c).status();
    after[c.rank()] = c.Barrier(absl::Now() + absl::Seconds(20));
  });
  for (int r = 0; r < n; ++r) {
    if (!got[r].ok()) {
      EXPECT_THAT(std::string(after[r].message()), HasSubstr(std::string(got[r].message())));
    }
  }
  return got;
}

TEST_P(StartAgreement, ModelCheckpointWithAnotherSavingRankFailsBeforeAnythingIsWritten) {
  const int n = GetParam();
  const std::string dir = JoinPath(testing::TempDir("save_on_rank_" + std::to_string(n)), "ckpt");
  std::filesystem::remove_all(dir);  // a checkpoint directory an earlier run of this test created
  // Case 7 of issue 23: save_on_rank differing made both ranks write the same temporary file.
  const std::vector<absl::Status> got = CreateCheckpoints(n, dir, [&](int r, ModelCheckpointOptions& o, std::string&) {
    if (r == n - 1) o.checkpoint.save_on_rank = 1;
  });
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(got[r].code(), absl::StatusCode::kInvalidArgument) << got[r];
    EXPECT_EQ(std::string(got[r].message()),
              "ModelCheckpoint options differ across ranks: save_on_rank is 0 on " + Others(n) + ", 1 on " + Last(n));
  }
  EXPECT_FALSE(FileSystem::Default()->Exists(dir)) << "the saver never ran: no directory";
}

TEST_P(StartAgreement, ModelCheckpointComparesOptionsAndObjectKeys) {
  const int n = GetParam();
  const std::string dir = JoinPath(testing::TempDir("ckpt_options_" + std::to_string(n)), "ckpt");
  std::filesystem::remove_all(dir);  // a checkpoint directory an earlier run of this test created
  std::vector<absl::Status> got = CreateCheckpoints(n, dir, [&](int r, ModelCheckpointOptions& o, std::string& key) {
    if (r != n - 1) return;
    o.checkpoint.n_saved = 3;
    o.checkpoint.async_save = true;
    key = "net";
  });
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(std::string(got[r].message()),
              "ModelCheckpoint options differ across ranks: objects is model on " + Others(n) + ", net on " + Last(n) +
                  "; n_saved is 2 on " + Others(n) + ", 3 on " + Last(n) + "; async_save is false on " + Others(n) +
                  ", true on " + Last(n));
  }
  // An invalid option on one rank: every rank hears of it (the others would wait for it).
  got = CreateCheckpoints(n, dir, [&](int r, ModelCheckpointOptions& o, std::string&) {
    if (r == n - 1) o.checkpoint.n_saved = 0;
  });
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(std::string(got[r].message()),
              "ModelCheckpoint options differ across ranks: arguments is valid on " + Others(n) +
                  ", Checkpoint: n_saved must be >= 1 (or unset to keep every checkpoint), got 0 on " + Last(n) +
                  "; n_saved is 2 on " + Others(n) + ", 0 on " + Last(n));
  }
  EXPECT_FALSE(FileSystem::Default()->Exists(dir));
  // The same everywhere: created.
  got = CreateCheckpoints(n, dir, [](int, ModelCheckpointOptions&, std::string&) {});
  for (int r = 0; r < n; ++r) EXPECT_TRUE(got[r].ok()) << got[r];
}

TEST_P(StartAgreement, CheckpointAgreesOnTheWorldAliveAtCreate) {
  const int n = GetParam();
  dist::testing::FakeWorld world(n);
  std::vector<absl::Status> got(n);
  // Checkpoint::Create agrees on the default communicator (the World): a fake World per rank
  // thread is not possible (the default is process-wide), so this runs Checkpoint::AgreeAtCreate
  // directly, as Create does.
  world.RunOnEveryRank([&](dist::Communicator& c) {
    torch::nn::Linear model(2, 2);
    CheckpointOptions o{.score_name = c.rank() == n - 1 ? "loss" : "accuracy"};
    got[c.rank()] = Checkpoint::AgreeAtCreate(c, "Checkpoint options", {{"model", model}}, o, absl::OkStatus());
  });
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(std::string(got[r].message()), "Checkpoint options differ across ranks: score_name is accuracy on " +
                                                 Others(n) + ", loss on " + Last(n));
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, StartAgreement, ::testing::Values(2, 4));

}  // namespace
}  // namespace ember
