// FileSystem::Default()'s ReadFile: only regular files, never waiting on a FIFO, never reading
// without bound (issue 24.9).
#include "base/file_system.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <string>

#include "absl/status/status.h"
#include "base/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

using ::testing::HasSubstr;

TEST(FileSystem, ReadFileReadsARegularFileWhole) {
  const std::string path = JoinPath(testing::TempDir("fs_regular"), "a.txt");
  std::string content(300000, 'x');
  content[123456] = 'y';
  auto f = FileSystem::Default()->NewWritableFile(path);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->Append(content.data(), content.size()).ok());
  ASSERT_TRUE((*f)->Close().ok());
  absl::StatusOr<std::string> back = FileSystem::Default()->ReadFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, content);
}

TEST(FileSystem, ReadFileRefusesAFifoWithoutWaitingForAWriter) {
  const std::string path = JoinPath(testing::TempDir("fs_fifo"), "model_1.pt");
  ASSERT_EQ(::mkfifo(path.c_str(), 0644), 0);
  std::future<absl::StatusOr<std::string>> read =
      std::async(std::launch::async, [&] { return FileSystem::Default()->ReadFile(path); });
  if (read.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    // Blocked on the FIFO: unblock it (a writer that closes at once) so the test can end.
    int fd = ::open(path.c_str(), O_WRONLY);
    if (fd >= 0) ::close(fd);
    FAIL() << "ReadFile waited on a FIFO";
  }
  absl::StatusOr<std::string> got = read.get();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr(path + ": not a regular file (a FIFO)"));
}

TEST(FileSystem, ReadFileRefusesDevicesAndDirectories) {
  absl::StatusOr<std::string> zero = FileSystem::Default()->ReadFile("/dev/zero");
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(zero.status().message()), HasSubstr("/dev/zero: not a regular file (a character device)"));
  const std::string dir = testing::TempDir("fs_dir");
  absl::StatusOr<std::string> d = FileSystem::Default()->ReadFile(dir);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("not a regular file (a directory)"));
}

}  // namespace
}  // namespace ember
