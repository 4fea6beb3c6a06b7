#include "base/directory_lock.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

using ::testing::HasSubstr;

TEST(DirectoryLock, SecondHolderIsRefusedWithTheFirstNamed) {
  const std::string dir = testing::TempDir("lock_two");
  absl::StatusOr<std::unique_ptr<DirectoryLock>> first = DirectoryLock::Acquire(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<DirectoryLock>> second = DirectoryLock::Acquire(dir, absl::Milliseconds(300));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));  // it waited for the holder
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr(absl::StrCat(dir, " is in use by another run (pid ", ::getpid(), " on host ")));
  first->reset();
  EXPECT_TRUE(DirectoryLock::Acquire(dir).ok()) << "released by the destructor";
}

TEST(DirectoryLock, WaitsForAHolderThatGoesAway) {
  const std::string dir = testing::TempDir("lock_wait");
  const pid_t child = ::fork();
  if (child == 0) {
    auto held = DirectoryLock::Acquire(dir);
    ::usleep(held.ok() ? 400000 : 0);
    ::_exit(held.ok() ? 0 : 1);
  }
  absl::SleepFor(absl::Milliseconds(150));
  absl::StatusOr<std::unique_ptr<DirectoryLock>> lock = DirectoryLock::Acquire(dir, absl::Seconds(10));
  EXPECT_TRUE(lock.ok()) << lock.status();
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(DirectoryLock, AHolderKilledWithSigkillLeavesNoLockInForce) {
  const std::string dir = testing::TempDir("lock_stale");
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    auto held = DirectoryLock::Acquire(dir);
    char c = held.ok() ? 'y' : 'n';
    (void)!::write(ready[1], &c, 1);
    ::pause();
    ::_exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y');
  EXPECT_FALSE(DirectoryLock::Acquire(dir).ok()) << "the child holds it";
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  absl::StatusOr<std::unique_ptr<DirectoryLock>> lock = DirectoryLock::Acquire(dir);
  EXPECT_TRUE(lock.ok()) << "the lock file stays but the lock died with its holder: " << lock.status();
}

TEST(DirectoryLock, MissingDirectoryIsAnErrorNamingIt) {
  absl::StatusOr<std::unique_ptr<DirectoryLock>> lock = DirectoryLock::Acquire("/nonexistent/ember-dir");
  ASSERT_FALSE(lock.ok());
  EXPECT_THAT(std::string(lock.status().message()), HasSubstr("/nonexistent/ember-dir/.ember.lock"));
}

}  // namespace
}  // namespace ember
