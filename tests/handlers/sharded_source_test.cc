// ShardedSource: an order independent of the world size, each rank's share of every global
// batch, and a checkpointed position that resumes mid-epoch on the same or another world size.
#include "handlers/parallel/sharded_source.h"

#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "distributed/testing/fake_world.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

using ::testing::HasSubstr;

struct Batch {
  torch::Tensor ids;
};

std::vector<int64_t> ToVector(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Creates a source on every rank of a fresh world of `world` ranks at once (Create agrees on the
// options across the ranks: a collective) with rank r's options `options(r)`; each rank's outcome.
std::vector<absl::StatusOr<std::unique_ptr<ShardedSource<Batch>>>> CreateOnEveryRank(
    int world, const std::function<ShardedSourceOptions(int)>& options) {
  dist::testing::FakeWorld w(world);
  std::vector<absl::StatusOr<std::unique_ptr<ShardedSource<Batch>>>> out;
  for (int r = 0; r < world; ++r) out.push_back(absl::UnknownError("not created"));
  w.RunOnEveryRank([&](dist::Communicator& c) {
    out[c.rank()] =
        ShardedSource<Batch>::Create(options(c.rank()), [](const torch::Tensor& ids) { return Batch{ids}; }, &c);
  });
  return out;
}

// The sources of the first `world` ranks of a world of w.world_size() ranks (created on all of them).
std::vector<std::unique_ptr<ShardedSource<Batch>>> Sources(dist::testing::FakeWorld& w, int world,
                                                           ShardedSourceOptions o) {
  std::vector<std::unique_ptr<ShardedSource<Batch>>> out;
  for (auto& s : CreateOnEveryRank(w.world_size(), [&](int) { return o; })) {
    EXPECT_TRUE(s.ok()) << s.status();
    if (static_cast<int>(out.size()) < world && s.ok()) out.push_back(*std::move(s));
  }
  return out;
}

// Reads `batches` global batches (every rank's share, in rank order); returns the ids.
std::vector<int64_t> ReadGlobal(std::vector<std::unique_ptr<ShardedSource<Batch>>>& sources, int batches) {
  std::vector<int64_t> ids;
  for (int b = 0; b < batches; ++b) {
    for (auto& s : sources) {
      const Batch* batch = s->Next();
      if (batch == nullptr) return ids;
      for (int64_t id : ToVector(batch->ids)) ids.push_back(id);
    }
  }
  return ids;
}

constexpr ShardedSourceOptions kOptions{.dataset_size = 100, .global_batch = 12, .seed = 5};

TEST(ShardedSource, TheGlobalOrderDoesNotDependOnTheWorldSize) {
  const std::vector<int64_t> order = ToVector(ShardedSampler::Order(5, 1, 100, true));
  for (int world : {1, 2, 3, 4}) {
    dist::testing::FakeWorld w(world);
    auto sources = Sources(w, world, kOptions);
    for (auto& s : sources) s->Restart();
    EXPECT_EQ(sources[0]->size(), 8);  // floor(100 / 12), whatever the world size
    EXPECT_EQ(sources[0]->per_rank_batch(), 12 / world);
    const std::vector<int64_t> ids = ReadGlobal(sources, 100);
    EXPECT_EQ(ids, std::vector<int64_t>(order.begin(), order.begin() + 96)) << "world " << world;
    EXPECT_EQ(std::set<int64_t>(ids.begin(), ids.end()).size(), 96u);  // none twice in an epoch
  }
  // Each epoch has its own order, a function of (seed, epoch) only.
  EXPECT_NE(ToVector(ShardedSampler::Order(5, 2, 100, true)), order);
  EXPECT_EQ(ToVector(ShardedSampler::Order(5, 2, 100, true)), ToVector(ShardedSampler::Order(5, 2, 100, true)));
  EXPECT_EQ(ToVector(ShardedSampler::Order(5, 1, 5, false)), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(ShardedSource, ResumesMidEpochOnAnotherWorldSizeWithEverySampleOnce) {
  const std::vector<int64_t> order = ToVector(ShardedSampler::Order(5, 2, 100, true));
  for (auto [from, to] : std::vector<std::pair<int, int>>{{4, 2}, {2, 3}, {1, 4}, {4, 1}, {3, 3}}) {
    dist::testing::FakeWorld before(from), after(to);
    auto first = Sources(before, from, kOptions);
    for (auto& s : first) s->Restart();
    ReadGlobal(first, 8);  // epoch 1
    for (auto& s : first) s->Restart();
    std::vector<int64_t> seen = ReadGlobal(first, 3);  // 3 global batches of epoch 2
    const Value state = first[0]->StateDict();
    EXPECT_EQ(state.Find("epoch")->as_int(), 2);
    EXPECT_EQ(state.Find("consumed")->as_int(), 36);
    auto second = Sources(after, to, kOptions);
    for (auto& s : second) {
      ASSERT_TRUE(s->LoadStateDict(state).ok());
      s->Restart();  // what the engine does when the resumed run starts
    }
    for (int64_t id : ReadGlobal(second, 100)) seen.push_back(id);
    EXPECT_EQ(seen, std::vector<int64_t>(order.begin(), order.begin() + 96)) << from << " -> " << to;
    // The next pass is epoch 3.
    for (auto& s : second) s->Restart();
    EXPECT_EQ(second[0]->epoch(), 3);
  }
}

TEST(ShardedSource, FinishedEpochResumesAtTheNextOne) {
  dist::testing::FakeWorld w(2);
  auto a = Sources(w, 2, kOptions);
  for (auto& s : a) s->Restart();
  ReadGlobal(a, 8);
  auto b = Sources(w, 2, kOptions);
  for (auto& s : b) {
    ASSERT_TRUE(s->LoadStateDict(a[0]->StateDict()).ok());
    s->Restart();
  }
  EXPECT_EQ(b[0]->epoch(), 2);
  EXPECT_EQ(b[0]->consumed(), 0);
}

TEST(ShardedSource, WithTheEngineAnInterruptedRunSeesTheSameBatchesAsAnUninterruptedOne) {
  auto run = [](int world, std::optional<int64_t> stop_at, const Value* engine_state, const Value* data_state,
                Value* engine_out, Value* data_out) {
    auto source = std::move(CreateOnEveryRank(world, [](int) { return kOptions; })[0]);  // rank 0's
    EXPECT_TRUE(source.ok());
    std::vector<std::vector<int64_t>> seen;
    Engine engine([&](Engine&, const Batch& b) { seen.push_back(ToVector(b.ids)); });
    if (stop_at) {
      engine.On(Events::IterationCompleted(), [&](Engine& e) {
        if (e.state().iteration == *stop_at) e.Terminate();
      });
    }
    if (engine_state != nullptr) {
      EXPECT_TRUE(LoadEngineStateDict(engine, *engine_state).ok());
      EXPECT_TRUE((*source)->LoadStateDict(*data_state).ok());
    }
    EXPECT_TRUE(engine.Run(**source, {.max_epochs = 3}).ok());
    if (engine_out != nullptr) *engine_out = EngineStateDict(engine);
    if (data_out != nullptr) *data_out = (*source)->StateDict();
    return seen;
  };
  // Rank 0 of 2 ranks, uninterrupted, against stopped at iteration 11 (epoch 2) and resumed.
  const auto whole = run(2, std::nullopt, nullptr, nullptr, nullptr, nullptr);
  ASSERT_EQ(whole.size(), 24u);
  Value engine_state, data_state;
  auto part = run(2, 11, nullptr, nullptr, &engine_state, &data_state);
  ASSERT_EQ(part.size(), 11u);
  const auto rest = run(2, std::nullopt, &engine_state, &data_state, nullptr, nullptr);
  part.insert(part.end(), rest.begin(), rest.end());
  EXPECT_EQ(part, whole);
}

TEST(ShardedSource, OptionsThatDifferOnOneRankFailCreateOnEveryRank) {
  for (int n : {2, 4}) {
    const std::string others = n == 2 ? "rank 0" : "ranks 0-2";
    const std::string last = n == 2 ? "rank 1" : "rank 3";
    auto made = CreateOnEveryRank(n, [&](int r) {
      ShardedSourceOptions o = kOptions;
      if (r == n - 1) o.global_batch = 24;
      return o;
    });
    auto seeded = CreateOnEveryRank(n, [&](int r) {
      ShardedSourceOptions o = kOptions;
      if (r == n - 1) o.seed = 6;
      return o;
    });
    for (int r = 0; r < n; ++r) {
      ASSERT_FALSE(made[r].ok());
      EXPECT_EQ(made[r].status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(made[r].status().message(),
                "ShardedSource options differ across ranks: global_batch is 12 on " + others + ", 24 on " + last);
      ASSERT_FALSE(seeded[r].ok());
      EXPECT_EQ(seeded[r].status().message(),
                "ShardedSource options differ across ranks: seed is 5 on " + others + ", 6 on " + last);
    }
  }
}

TEST(ShardedSource, BadSettingsAreClearErrors) {
  auto s = std::move(CreateOnEveryRank(5, [](int) { return kOptions; })[0]);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("the global batch (12) is not divisible by the world size (5)"));
  dist::testing::FakeWorld two(2);
  auto a = Sources(two, 1, kOptions);
  ShardedSourceOptions other = kOptions;
  other.seed = 6;
  auto b = Sources(two, 1, other);
  absl::Status st = b[0]->LoadStateDict(a[0]->StateDict());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.message()), HasSubstr("written with seed 5, this run has 6"));
  Value bad = a[0]->StateDict();
  bad.Set("consumed", int64_t{13});
  EXPECT_EQ(a[0]->LoadStateDict(bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ShardedSource<Batch>::Create({.dataset_size = 5, .global_batch = 12}, [](const torch::Tensor& ids) {
                 return Batch{ids};
               }).ok());
}

}  // namespace
}  // namespace ember
