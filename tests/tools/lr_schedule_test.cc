#include "tools/lr_schedule.h"

#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "handlers/param_scheduler.h"

namespace ember::tools {
namespace {

using testing::HasSubstr;

constexpr double kLr = 0.1;

// An SGD over one parameter with --lr's value, as the trainer builds it.
struct Sgd {
  torch::Tensor w = torch::zeros({2}, torch::requires_grad());
  torch::optim::SGD optimizer{std::vector<torch::Tensor>{w}, torch::optim::SGDOptions(kLr).momentum(0.9)};
  double lr() { return static_cast<torch::optim::SGDOptions&>(optimizer.param_groups()[0].options()).lr(); }
};

// The lr of iterations 1..n (the scheduler fires at ITERATION_STARTED, before each step).
std::vector<double> Lrs(ParamScheduler& s, Sgd& sgd, int64_t n) {
  std::vector<double> out;
  for (int64_t i = 0; i < n; ++i) {
    s.Step();
    out.push_back(sgd.lr());
  }
  return out;
}

std::unique_ptr<ParamScheduler> Build(const std::string& text, int64_t warmup, Sgd& sgd, int64_t total) {
  absl::StatusOr<LrSchedule> spec = ParseLrSchedule(text, warmup);
  EXPECT_TRUE(spec.ok()) << spec.status();
  if (!spec.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<ParamScheduler>> made = BuildLrScheduler(*spec, sgd.optimizer, kLr, total);
  EXPECT_TRUE(made.ok()) << made.status();
  return made.ok() ? *std::move(made) : nullptr;
}

TEST(LrSchedule, MalformedFlagsAreNamedWithWhatIsAllowed) {
  struct Case {
    std::string text;
    int64_t warmup;
    std::string says;
  } cases[] = {
      {"linear", 0, "--lr_schedule=linear: unknown schedule (allowed: constant, cosine or piecewise:"},
      {"Cosine", 0, "unknown schedule"},
      {"", 0, "--lr_schedule=: unknown schedule"},
      {"constant", -3, "--warmup_iters must be 0 (no warm-up) or >= 2, got -3"},
      {"cosine", 1, "--warmup_iters must be 0 (no warm-up) or >= 2, got 1"},
      {"piecewise:", 0, "'' is not ITERATION=LR"},
      {"piecewise:0=0.1,x", 0, "'x' is not ITERATION=LR"},
      {"piecewise:0=0.1,5=", 0, "'5=' is not ITERATION=LR"},
      {"piecewise:0=0.1=2", 0, "'0=0.1=2' is not ITERATION=LR"},
      {"piecewise:1.5=0.1", 0, "'1.5=0.1' is not ITERATION=LR"},
      {"piecewise:-1=0.1", 0, "iteration -1 is negative"},
      {"piecewise:0=-0.1", 0, "lr -0.1 at iteration 0 must be finite and >= 0"},
      {"piecewise:0=nan", 0, "'0=nan' is not ITERATION=LR"},
      {"piecewise:0=inf", 0, "'0=inf' is not ITERATION=LR"},
      {"piecewise:0=0x10", 0, "'0=0x10' is not ITERATION=LR"},
      {"piecewise:+5=0.1", 0, "'+5=0.1' is not ITERATION=LR"},
      {"piecewise: 5=0.1", 0, "' 5=0.1' is not ITERATION=LR"},
      {"piecewise:5=0.1 ", 0, "'5=0.1 ' is not ITERATION=LR"},
      {"piecewise:5=+0.1", 0, "'5=+0.1' is not ITERATION=LR"},
      {"piecewise:10=0.1,5=0.2", 0, "iteration 5 comes after 10 (milestones must not decrease)"},
      {"piecewise:0=0,50=0.1", 5, "--warmup_iters=5 does not combine with --lr_schedule=piecewise:0=0,50=0.1"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<LrSchedule> s = ParseLrSchedule(c.text, c.warmup);
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(c.says)) << c.text;
  }
}

TEST(LrSchedule, ConstantWithoutWarmupIsNoScheduler) {
  Sgd sgd;
  absl::StatusOr<LrSchedule> spec = ParseLrSchedule("constant", 0);
  ASSERT_TRUE(spec.ok());
  EXPECT_FALSE(spec->scheduled());
  absl::StatusOr<std::unique_ptr<ParamScheduler>> made = BuildLrScheduler(*spec, sgd.optimizer, kLr, 100);
  ASSERT_TRUE(made.ok());
  EXPECT_EQ(*made, nullptr);
}

// 0 at iteration 1, --lr at iteration N: the same ramp as the cosine's warm-up.
TEST(LrSchedule, ConstantWithWarmupRampsFromZeroToTheLrAtIterationN) {
  Sgd sgd;
  auto s = Build("constant", 4, sgd, 10);
  ASSERT_NE(s, nullptr);
  std::vector<double> lrs = Lrs(*s, sgd, 10);
  for (int64_t i = 1; i <= 10; ++i) EXPECT_NEAR(lrs[i - 1], i < 4 ? kLr * (i - 1) / 3 : kLr, 1e-12) << "iteration " << i;
  Sgd cosine_sgd;
  auto cosine = Build("cosine", 4, cosine_sgd, 100);
  std::vector<double> cosine_lrs = Lrs(*cosine, cosine_sgd, 4);
  for (int64_t i = 0; i < 4; ++i) EXPECT_NEAR(cosine_lrs[i], lrs[i], 1e-12) << "warm-up iteration " << i + 1;
}

TEST(LrSchedule, CosineSpansTheWholeRunWithoutRestarting) {
  const int64_t total = 50;
  Sgd sgd;
  auto s = Build("cosine", 0, sgd, total);
  ASSERT_NE(s, nullptr);
  std::vector<double> lrs = Lrs(*s, sgd, total);
  for (int64_t k = 0; k < total; ++k) {
    EXPECT_NEAR(lrs[k], kLr * (1 + std::cos(M_PI * k / total)) / 2, 1e-12) << "iteration " << k + 1;
  }
}

TEST(LrSchedule, CosineAfterAWarmupPeaksAtTheWarmupsEndAndDecaysToTheRunsEnd) {
  const int64_t total = 50, warmup = 10;
  Sgd sgd;
  auto s = Build("cosine", warmup, sgd, total);
  ASSERT_NE(s, nullptr);
  std::vector<double> lrs = Lrs(*s, sgd, total);
  EXPECT_EQ(lrs[0], 0.0);
  for (int64_t i = 1; i < warmup; ++i) EXPECT_GT(lrs[i], lrs[i - 1]) << "warm-up iteration " << i + 1;
  EXPECT_NEAR(lrs[warmup - 1], kLr, 1e-12);  // iteration `warmup`
  const int64_t cycle = total - warmup + 1;
  for (int64_t k = 0; warmup - 1 + k < total; ++k) {
    EXPECT_NEAR(lrs[warmup - 1 + k], kLr * (1 + std::cos(M_PI * k / cycle)) / 2, 1e-12) << "cosine event " << k;
  }
  EXPECT_LT(lrs.back(), 0.01 * kLr);  // the last iteration, not a restart at the peak
}

TEST(LrSchedule, CosineTooShortForTheRunIsRefused) {
  Sgd sgd;
  absl::StatusOr<LrSchedule> spec = ParseLrSchedule("cosine", 10);
  ASSERT_TRUE(spec.ok());
  absl::StatusOr<std::unique_ptr<ParamScheduler>> made = BuildLrScheduler(*spec, sgd.optimizer, kLr, 10);
  ASSERT_FALSE(made.ok());
  EXPECT_THAT(std::string(made.status().message()),
              HasSubstr("--lr_schedule=cosine --warmup_iters=10: the run has 10 iterations (--epochs x the epoch "
                        "length), which leaves 1 for the cosine after the warm-up"));
}

// Milestones name the iteration the metrics report (1-based): the lr at iteration 10 is the
// milestone's; 0 is taken as 1.
TEST(LrSchedule, PiecewiseIsLinearBetweenMilestonesAtTheReportedIterations) {
  Sgd sgd;
  auto s = Build("piecewise:0=0.2,10=0.05,10=0.5,20=0", 0, sgd, 30);
  ASSERT_NE(s, nullptr);
  std::vector<double> lrs = Lrs(*s, sgd, 30);
  for (int64_t i = 1; i <= 30; ++i) {
    const double want = i < 10 ? 0.2 + (0.05 - 0.2) * (i - 1) / 9.0 : i < 20 ? 0.5 * (20 - i) / 10.0 : 0.0;
    EXPECT_NEAR(lrs[i - 1], want, 1e-12) << "iteration " << i;
  }
  Sgd one_based;
  auto t = Build("piecewise:1=0.3,5=0.1", 0, one_based, 6);
  std::vector<double> got = Lrs(*t, one_based, 6);
  EXPECT_NEAR(got[0], 0.3, 1e-12);
  EXPECT_NEAR(got[4], 0.1, 1e-12);  // iteration 5
}

TEST(LrSchedule, DescribeNamesTheFlagsAndTheCosinesLength) {
  absl::StatusOr<LrSchedule> cosine = ParseLrSchedule("cosine", 10);
  ASSERT_TRUE(cosine.ok());
  EXPECT_EQ(cosine->Describe(256), "--lr_schedule=cosine --warmup_iters=10 over 256 iterations");
  absl::StatusOr<LrSchedule> piecewise = ParseLrSchedule("piecewise:0=0.1,100=0.01", 0);
  ASSERT_TRUE(piecewise.ok());
  EXPECT_EQ(piecewise->Describe(256), "--lr_schedule=piecewise:0=0.1,100=0.01");
}

// What a resumed trainer does: a fresh optimizer and scheduler, the saved state loaded, the run
// goes on from there with the lr of the uninterrupted run at every iteration.
TEST(LrSchedule, AScheduleLoadedFromItsStateContinuesExactly) {
  for (const auto& [text, warmup] : {std::pair<std::string, int64_t>{"cosine", 8}, {"cosine", 0}, {"constant", 6},
                                     {"piecewise:0=0.1,7=0.3,30=0.01", 0}}) {
    SCOPED_TRACE(text);
    const int64_t total = 40;
    Sgd whole;
    auto uninterrupted = Build(text, warmup, whole, total);
    ASSERT_NE(uninterrupted, nullptr);
    std::vector<double> want = Lrs(*uninterrupted, whole, total);
    for (int64_t cut : {1, 5, 7, 8, 9, 23, 39}) {
      Sgd first;
      auto before = Build(text, warmup, first, total);
      std::vector<double> got = Lrs(*before, first, cut);
      Value state = before->StateDict();
      Sgd second;
      auto after = Build(text, warmup, second, total);
      ASSERT_TRUE(after->LoadStateDict(state).ok()) << "cut at " << cut;
      std::vector<double> rest = Lrs(*after, second, total - cut);
      got.insert(got.end(), rest.begin(), rest.end());
      EXPECT_EQ(got, want) << "cut at " << cut;
    }
  }
}

}  // namespace
}  // namespace ember::tools
