// The atomic write protocol under injected faults: failing each step in turn (ENOSPC, EIO), then
// a simulated power loss, leaves the old file intact, or the whole new one, never a torn file.
#include "base/atomic_file.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "base/file_system.h"
#include "base/testing/fault_injection_file_system.h"
#include "base/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ember {
namespace {

using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

using testing::TempDir;

auto Content(const std::string& text) {
  return [text](const AppendFn& append) { return append(text.data(), text.size()); };
}

TEST(AtomicFile, WritesAndReplaces) {
  const std::string dir = TempDir("atomic_ok");
  testing::FaultInjectionFileSystem fs;
  ASSERT_TRUE(WriteFileAtomically(&fs, dir + "/a.pt", Content("one")).ok());
  ASSERT_TRUE(WriteFileAtomically(&fs, dir + "/a.pt", Content("two")).ok());
  EXPECT_EQ(*fs.ReadFile(dir + "/a.pt"), "two");
  EXPECT_THAT(*fs.ListDir(dir), UnorderedElementsAre("a.pt"));
  // The protocol, in order.
  std::vector<std::string> log = fs.log();
  ASSERT_EQ(log.size(), 2u * kAtomicWriteOps);
  EXPECT_THAT(log[0], HasSubstr("create " + dir + "/.a.pt.ember-tmp"));
  EXPECT_THAT(log[2], HasSubstr("fsync " + dir + "/.a.pt.ember-tmp"));
  EXPECT_THAT(log[5], HasSubstr("rename"));
  EXPECT_EQ(log[6], "fsync " + dir + "/");
  ASSERT_TRUE(fs.SimulateCrash().ok());
  EXPECT_EQ(*fs.ReadFile(dir + "/a.pt"), "two");  // everything was durable
}

TEST(AtomicFile, EveryFailedStepThenACrashKeepsTheOldFile) {
  for (absl::Status error : {absl::ResourceExhaustedError("No space left on device"),
                             absl::DataLossError("Input/output error")}) {
    for (int step = 0; step < kAtomicWriteOps; ++step) {
      SCOPED_TRACE(::testing::Message() << error << " at step " << step);
      const std::string dir = TempDir("atomic_fail");
      testing::FaultInjectionFileSystem fs;
      ASSERT_TRUE(WriteFileAtomically(&fs, dir + "/model.pt", Content("old content")).ok());
      fs.FailOp(step, error);
      absl::Status s = WriteFileAtomically(&fs, dir + "/model.pt", Content("new content!"));
      ASSERT_FALSE(s.ok());
      EXPECT_EQ(s.code(), error.code());
      EXPECT_THAT(std::string(s.message()), HasSubstr(dir + "/model.pt"));
      ASSERT_TRUE(fs.SimulateCrash().ok());
      EXPECT_EQ(*fs.ReadFile(dir + "/model.pt"), "old content");
      // The temporary file may survive a crash, but never under the final name.
      std::vector<std::string> names = *fs.ListDir(dir);
      for (const std::string& name : names) {
        EXPECT_TRUE(name == "model.pt" || IsTempName(name)) << name;
      }
    }
  }
}

TEST(AtomicFile, CrashWithoutDirectoryFsyncLosesOnlyTheNewFile) {
  const std::string dir = TempDir("atomic_nodirsync");
  testing::FaultInjectionFileSystem fs;
  // A write that never reaches fsync of the data: the crash truncates it.
  {
    auto file = fs.NewWritableFile(dir + "/torn.pt");
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE((*file)->Append("abc", 3).ok());
    ASSERT_TRUE((*file)->Close().ok());
  }
  ASSERT_TRUE(fs.SimulateCrash().ok());
  EXPECT_FALSE(fs.Exists(dir + "/torn.pt"));  // its directory entry was never made durable
}

TEST(AtomicFile, DirectWriteCanLeaveATornFile) {
  // ignite's atomic=False: documented, and the reason atomic is the default.
  const std::string dir = TempDir("direct");
  testing::FaultInjectionFileSystem fs;
  fs.FailOp(2, absl::ResourceExhaustedError("No space left on device"));
  absl::Status s = WriteFileDirectly(&fs, dir + "/model.pt", [](const AppendFn& append) {
    if (absl::Status s = append("part1", 5); !s.ok()) return s;
    return append("part2", 5);
  });
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(*fs.ReadFile(dir + "/model.pt"), "part1");
}

TEST(FileSystem, ErrorsNameThePathAndTheCall) {
  FileSystem* fs = FileSystem::Default();
  absl::Status s = fs->ReadFile("/nonexistent/dir/file").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("open /nonexistent/dir/file"));
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(DirName("a/b/c.pt"), "a/b");
  EXPECT_EQ(DirName("c.pt"), ".");
  EXPECT_EQ(BaseName("a/b/c.pt"), "c.pt");
}

}  // namespace
}  // namespace ember
