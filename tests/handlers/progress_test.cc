// Progress: what a terminal and a log see, on the displaying rank only.
#include "handlers/progress.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

using ::testing::HasSubstr;

// Runs 2 epochs of 3 steps whose outputs are 1, 2, 3, ... with a Progress in `mode`.
std::string Display(Progress::Options options, double* last_mean = nullptr) {
  char* buffer = nullptr;
  size_t size = 0;
  std::FILE* out = open_memstream(&buffer, &size);
  options.out = out;
  options.line_interval = absl::ZeroDuration();
  Progress progress(options);
  std::vector<int> data = {1, 2, 3};
  Engine engine([](Engine& e, const int& x) { return static_cast<double>(x + 3 * (e.state().epoch - 1)); });
  EXPECT_TRUE(progress.Attach(engine).ok());
  engine.On(Events::EpochCompleted(), [&](Engine& e) { progress.Line("end of epoch " + std::to_string(e.state().epoch)); });
  EXPECT_TRUE(engine.Run(data, {.max_epochs = 2}).ok());
  if (last_mean != nullptr) *last_mean = progress.epoch_mean_output();
  std::fclose(out);
  std::string text(buffer, size);
  std::free(buffer);
  return text;
}

TEST(Progress, LinesForLogs) {
  double mean = 0;
  EXPECT_EQ(Display({.mode = Progress::Mode::kLines}, &mean),
            "epoch 1/2 iteration 1/3 loss 1.0000\n"
            "epoch 1/2 iteration 2/3 loss 1.5000\n"
            "epoch 1/2 iteration 3/3 loss 2.0000\n"
            "end of epoch 1\n"
            "epoch 2/2 iteration 1/3 loss 4.0000\n"
            "epoch 2/2 iteration 2/3 loss 4.5000\n"
            "epoch 2/2 iteration 3/3 loss 5.0000\n"
            "end of epoch 2\n");
  EXPECT_DOUBLE_EQ(mean, 5.0);  // the running mean of the last epoch's outputs 4, 5, 6
}

TEST(Progress, BarRedrawsInPlaceAndEndsTheLineAtTheEpochsEnd) {
  const std::string text = Display({.mode = Progress::Mode::kBar, .bar_width = 3});
  EXPECT_THAT(text, HasSubstr("\repoch 1/2 [#..] 1/3 loss 1.0000\repoch 1/2 [##.] 2/3 loss 1.5000"
                              "\repoch 1/2 [###] 3/3 loss 2.0000\nend of epoch 1\n"));
  EXPECT_THAT(text, HasSubstr("\repoch 2/2 [###] 3/3 loss 5.0000\nend of epoch 2\n"));
}

TEST(Progress, OnlyTheDisplayingRankPrints) {
  double mean = 0;
  EXPECT_EQ(Display({.mode = Progress::Mode::kLines, .rank = 1}, &mean), "");
  EXPECT_DOUBLE_EQ(mean, 5.0);  // every rank keeps the mean
  EXPECT_EQ(Display({.mode = Progress::Mode::kNone}), "end of epoch 1\nend of epoch 2\n");
}

TEST(Progress, ParseModeNamesTheAllowedValues) {
  EXPECT_EQ(*Progress::ParseMode("bar"), Progress::Mode::kBar);
  absl::StatusOr<Progress::Mode> bad = Progress::ParseMode("fancy");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(std::string(bad.status().message()), "progress mode 'fancy': allowed: auto, bar, lines, none");
}

}  // namespace
}  // namespace ember
