// ResizeLargeBuffer: content kept, new bytes zeroed, any size; AdviseHugePages: harmless on any
// range; and, where the kernel offers transparent huge pages for madvised memory, a large buffer
// is backed by 2 MiB pages (read back from /proc/self/smaps).
#include "base/large_buffer.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace ember {
namespace {

TEST(LargeBuffer, ResizeKeepsContentAndZeroesTheRest) {
  std::string s = "hello";
  ResizeLargeBuffer(s, 8u << 20);
  ASSERT_EQ(s.size(), 8u << 20);
  EXPECT_EQ(s.substr(0, 5), "hello");
  EXPECT_EQ(s.find_first_not_of('\0', 5), std::string::npos);
  ResizeLargeBuffer(s, 3);
  EXPECT_EQ(s, "hel");
  ResizeLargeBuffer(s, 0);
  EXPECT_TRUE(s.empty());
  std::string small;
  ResizeLargeBuffer(small, 100);
  EXPECT_EQ(small, std::string(100, '\0'));
}

TEST(LargeBuffer, AdviceIsHarmlessOnAnyRange) {
  AdviseHugePages(nullptr, 1u << 30);
  char stack[64];
  AdviseHugePages(stack, sizeof(stack));
  std::string s(5u << 20, 'x');
  AdviseHugePages(s.data() + 1, s.size() - 1);  // unaligned: only whole 2 MiB pages inside
  EXPECT_EQ(s.find_first_not_of('x'), std::string::npos);
}

// The kB of AnonHugePages of the mapping that holds `p`, or -1 if not found.
long HugeKib(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      inside = lo <= at && at < hi;
      continue;
    }
    if (inside && line.rfind("AnonHugePages:", 0) == 0) return std::stol(line.substr(14));
  }
  return -1;
}

TEST(LargeBuffer, LargeBuffersGetHugePagesWhereTheKernelOffersThem) {
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::stringstream mode;
  mode << thp.rdbuf();
  if (mode.str().find("[madvise]") == std::string::npos && mode.str().find("[always]") == std::string::npos) {
    GTEST_SKIP() << "transparent huge pages are off here (" << mode.str() << "): buffers keep 4 KiB pages";
  }
  std::string s;
  ResizeLargeBuffer(s, 64u << 20);
  const long kib = HugeKib(s.data() + s.size() / 2);
  ASSERT_GE(kib, 0) << "no mapping found for the buffer in /proc/self/smaps";
  // The kernel may lack free 2 MiB blocks for some of it; most of 64 MiB must be huge.
  EXPECT_GE(kib, 32 * 1024) << "64 MiB buffer, only " << kib << " kB on huge pages";
}

}  // namespace
}  // namespace ember
