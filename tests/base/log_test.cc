// The library's log seam (base/log.h): stderr by default, one sink for the whole library once a
// program installs its own, serialized calls, and the real warnings of the engine and DiskSaver
// arriving there.
#include "base/log.h"

#include <atomic>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/testing/temp_dir.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "handlers/checkpoint/disk_saver.h"

namespace ember {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

using Logged = std::vector<std::pair<LogSeverity, std::string>>;

LogSink Collect(Logged* into) {
  return [into](LogSeverity severity, std::string_view message) { into->emplace_back(severity, std::string(message)); };
}

TEST(Log, DefaultWritesOneLineToStderr) {
  ::testing::internal::CaptureStderr();
  LogWarning("DiskSaver: something happened");
  Log(LogSeverity::kError, "an error");
  Log(LogSeverity::kInfo, "a note");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(),
            "[ember] WARNING: DiskSaver: something happened\n[ember] ERROR: an error\n[ember] a note\n");
}

TEST(Log, SinkReceivesEveryMessageAndTheDefaultComesBack) {
  Logged logged;
  LogSink previous = SetLogSink(Collect(&logged));
  EXPECT_FALSE(previous);  // the default
  ::testing::internal::CaptureStderr();
  LogWarning("first");
  Log(LogSeverity::kError, "second");
  EXPECT_TRUE(SetLogSink(nullptr));  // gives back the sink it replaces
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_THAT(logged, ElementsAre(Pair(LogSeverity::kWarning, "first"), Pair(LogSeverity::kError, "second")));

  ::testing::internal::CaptureStderr();
  LogWarning("third");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "[ember] WARNING: third\n");
  EXPECT_EQ(logged.size(), 2u);
}

TEST(Log, ScopedSinkPutsThePreviousOneBack) {
  Logged outer, inner;
  ScopedLogSink a(Collect(&outer));
  {
    ScopedLogSink b(Collect(&inner));
    LogWarning("to inner");
  }
  LogWarning("to outer");
  EXPECT_THAT(inner, ElementsAre(Pair(LogSeverity::kWarning, "to inner")));
  EXPECT_THAT(outer, ElementsAre(Pair(LogSeverity::kWarning, "to outer")));
}

// Calls are serialized: a sink that appends to an unsynchronized vector sees every message from
// every thread (ThreadSanitizer, in CI's tsan pass, would report a race if they were not).
TEST(Log, ConcurrentWarningsReachTheSinkOneAtATime) {
  Logged logged;
  ScopedLogSink sink(Collect(&logged));
  constexpr int kThreads = 4, kEach = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < kEach; ++i) LogWarning("thread " + std::to_string(t));
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(logged.size(), static_cast<size_t>(kThreads * kEach));
}

// Once SetLogSink returns, the previous sink is never called again, even while other threads log.
TEST(Log, AReplacedSinkIsNeverCalledAfterSetLogSinkReturns) {
  std::atomic<bool> replaced{false}, stop{false};
  std::atomic<int> late_calls{0}, new_calls{0};
  SetLogSink([&](LogSeverity, std::string_view) {
    if (replaced.load()) late_calls.fetch_add(1);
  });
  std::thread logger([&] {
    while (!stop.load()) LogWarning("tick");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  SetLogSink([&](LogSeverity, std::string_view) { new_calls.fetch_add(1); });
  replaced.store(true);
  while (new_calls.load() < 100) std::this_thread::yield();
  stop.store(true);
  logger.join();
  SetLogSink(nullptr);
  EXPECT_EQ(late_calls.load(), 0);
}

// A real library warning: DiskSaver meets a .pt file it cannot read while listing a directory.
TEST(Log, DiskSaverWarningArrivesAtTheSink) {
  const std::string dir = testing::TempDir("log_test_disk_saver");
  std::ofstream(dir + "/model_1.pt") << "not a torch.save archive";
  absl::StatusOr<std::unique_ptr<DiskSaver>> saver = DiskSaver::Create({.dirname = dir, .require_empty = false});
  ASSERT_TRUE(saver.ok()) << saver.status();
  Logged logged;
  ::testing::internal::CaptureStderr();
  {
    ScopedLogSink sink(Collect(&logged));
    ASSERT_TRUE((*saver)->List().ok());
  }
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");  // the sink, not stderr
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_EQ(logged[0].first, LogSeverity::kWarning);
  EXPECT_THAT(logged[0].second, HasSubstr("DiskSaver: ignoring " + dir + "/model_1.pt: "));
}

// An engine without its own warning handler warns through the library sink; one with a handler
// keeps its warnings to itself.
class OneShot : public DataSource<int> {
 public:
  const int* Next() override { return next_ < 2 ? &(value_ = next_++) : nullptr; }
  void Restart() override {
    if (++restarts_ == 1) next_ = 0;
  }

 private:
  int next_ = 0, value_ = 0, restarts_ = 0;
};

int Identity(Engine&, const int& b) { return b; }

TEST(Log, EngineWarningArrivesAtTheSinkUnlessTheEngineHasItsOwnHandler) {
  Logged logged;
  ScopedLogSink sink(Collect(&logged));
  {
    OneShot data;
    Engine engine(Identity);
    ASSERT_TRUE(engine.Run(data, {.max_epochs = 3}).ok());
  }
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_EQ(logged[0].first, LogSeverity::kWarning);
  EXPECT_THAT(logged[0].second, HasSubstr("Data iterator can not provide data anymore"));

  std::vector<std::string> own;
  OneShot data;
  Engine engine(Identity);
  engine.set_warning_handler([&](const std::string& w) { own.push_back(w); });
  ASSERT_TRUE(engine.Run(data, {.max_epochs = 3}).ok());
  EXPECT_EQ(own.size(), 1u);
  EXPECT_EQ(logged.size(), 1u);
}

}  // namespace
}  // namespace ember
