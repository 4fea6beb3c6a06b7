#include "handlers/metrics_log.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <vector>
#include <sstream>
#include <string>

#include "base/atomic_file.h"
#include "base/testing/fault_injection_file_system.h"
#include "base/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

// fsync, observed: the paths of the files this process fsynced (then the real fsync).
std::mutex g_synced_mu;
std::vector<std::string> g_synced;
extern "C" int fsync(int fd) {
  char target[PATH_MAX];
  const ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), target, sizeof(target));
  {
    std::lock_guard<std::mutex> lock(g_synced_mu);
    g_synced.push_back(n > 0 ? std::string(target, static_cast<size_t>(n)) : "?");
  }
  static auto real = reinterpret_cast<int (*)(int)>(::dlsym(RTLD_NEXT, "fsync"));
  return real(fd);
}

namespace ember {
namespace {

int SyncsOf(const std::string& path) {
  char real[PATH_MAX];
  const std::string canonical = ::realpath(path.c_str(), real) != nullptr ? real : path;
  std::lock_guard<std::mutex> lock(g_synced_mu);
  return static_cast<int>(std::count(g_synced.begin(), g_synced.end(), canonical));
}

// Issue 24.17: a line is durable when Append returns, as the checkpoint it describes.
TEST(MetricsLog, EachLineIsFsyncedBeforeAppendReturns) {
  const std::string path = JoinPath(testing::TempDir("metrics_fsync"), "metrics.jsonl");
  auto log = MetricsLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  const int before = SyncsOf(path);
  ASSERT_TRUE((*log)->Append({{"epoch", 1}, {"iteration", 10}}).ok());
  EXPECT_EQ(SyncsOf(path), before + 1);
  ASSERT_TRUE((*log)->Append({{"epoch", 2}, {"iteration", 20}}).ok());
  EXPECT_EQ(SyncsOf(path), before + 2);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void Write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(MetricsLog, AppendsOneJsonObjectPerLine) {
  const std::string path = JoinPath(testing::TempDir("metrics_append"), "metrics.jsonl");
  auto log = MetricsLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_TRUE((*log)->Append({{"epoch", 1}, {"iteration", 10}, {"dir", "a\tb"}, {"loss", 0.1234567891234}}).ok());
  ASSERT_TRUE((*log)->Append({{"epoch", 2}, {"iteration", 20}, {"loss", nullptr}}).ok());
  EXPECT_EQ(Slurp(path), "{\"epoch\": 1, \"iteration\": 10, \"dir\": \"a\\tb\", \"loss\": 0.123456789}\n"
                         "{\"epoch\": 2, \"iteration\": 20, \"loss\": null}\n");
}

TEST(MetricsLog, ResumeAtDropsTheAbandonedFutureAndATornLine) {
  const std::string path = JoinPath(testing::TempDir("metrics_resume"), "metrics.jsonl");
  Write(path, "{\"epoch\": 1, \"iteration\": 10}\n{\"epoch\": 2, \"iteration\": 20}\n"
              "{\"epoch\": 3, \"iteration\": 30}\n{\"epoch\": 4, \"itera");
  auto log = MetricsLog::Open(path);
  ASSERT_TRUE(log.ok());
  absl::StatusOr<int> dropped = (*log)->ResumeAt(20);
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_EQ(*dropped, 2);
  ASSERT_TRUE((*log)->Append({{"epoch", 3}, {"iteration", 30}}).ok());
  EXPECT_EQ(Slurp(path), "{\"epoch\": 1, \"iteration\": 10}\n{\"epoch\": 2, \"iteration\": 20}\n"
                         "{\"epoch\": 3, \"iteration\": 30}\n");
  EXPECT_EQ(*(*log)->ResumeAt(0), 3) << "a fresh start empties it";
  EXPECT_EQ(Slurp(path), "");
}

TEST(MetricsLog, AFailedRewriteLeavesTheOldLogWhole) {
  const std::string path = JoinPath(testing::TempDir("metrics_fault"), "metrics.jsonl");
  const std::string old = "{\"epoch\": 1, \"iteration\": 10}\n{\"epoch\": 2, \"iteration\": 20}\n";
  for (int step = 0; step < kAtomicWriteOps; ++step) {
    Write(path, old);
    testing::FaultInjectionFileSystem fs;
    fs.FailOp(step, absl::ResourceExhaustedError("No space left on device"));
    auto log = MetricsLog::Open(path, &fs);
    ASSERT_TRUE(log.ok());
    absl::StatusOr<int> dropped = (*log)->ResumeAt(10);
    EXPECT_FALSE(dropped.ok()) << "step " << step;
    const std::string now = Slurp(path);
    EXPECT_TRUE(now == old || now == "{\"epoch\": 1, \"iteration\": 10}\n") << "step " << step << ": torn log " << now;
  }
}

}  // namespace
}  // namespace ember
