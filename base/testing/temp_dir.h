// File: base/testing/temp_dir.h
//
// TempDir: an empty directory named `name` under the test's TEST_TMPDIR (else /tmp), emptied of
// the files an earlier test case left there. For tests only.
#ifndef EMBER_BASE_TESTING_TEMP_DIR_H_
#define EMBER_BASE_TESTING_TEMP_DIR_H_

#include <cstdlib>
#include <string>
#include <vector>

#include "base/file_system.h"

namespace ember::testing {

inline std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  const std::string dir = JoinPath(base ? base : "/tmp", name);
  FileSystem* fs = FileSystem::Default();
  if (fs->Exists(dir)) {
    absl::StatusOr<std::vector<std::string>> names = fs->ListDir(dir);
    if (names.ok()) {
      for (const std::string& f : *names) (void)fs->RemoveFile(JoinPath(dir, f));
    }
  }
  (void)fs->CreateDirs(dir);
  return dir;
}

}  // namespace ember::testing

#endif  // EMBER_BASE_TESTING_TEMP_DIR_H_
