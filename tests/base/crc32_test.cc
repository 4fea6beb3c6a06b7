// The accelerated CRC-32 equals zlib's for every length, alignment and starting value.
#include "base/crc32.h"

#include <zlib.h>

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ember {
namespace {

uint32_t Reference(uint32_t crc, const unsigned char* p, size_t n) {
  return static_cast<uint32_t>(crc32(crc, p, static_cast<uInt>(n)));
}

TEST(Crc32, MatchesZlibEverywhere) {
  std::mt19937 rng(42);
  std::vector<unsigned char> buf(1 << 16);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t offset : {0, 1, 3, 8, 15}) {
    for (size_t n = 0; n < 700; ++n) {
      ASSERT_EQ(Crc32(0, buf.data() + offset, n), Reference(0, buf.data() + offset, n))
          << "offset " << offset << " length " << n;
    }
  }
  for (size_t n : {size_t{4096}, size_t{65519}, size_t{65536} - 16}) {
    uint32_t start = static_cast<uint32_t>(rng());
    EXPECT_EQ(Crc32(start, buf.data(), n), Reference(start, buf.data(), n)) << n;
  }
}

// The 512-bit fold (VPCLMULQDQ, from 1 KiB where the CPU has it) hands its lanes to the 128-bit
// fold at every length, alignment and starting value: one step of 256 bytes and none more, many,
// and every tail of 16-byte blocks and bytes after them.
TEST(Crc32, TheWideFoldMatchesZlibFromOneKibibyteUp) {
  if (!crc32_internal::WideFoldInUse()) GTEST_SKIP() << "this CPU has no VPCLMULQDQ with AVX-512";
  std::mt19937 rng(7);
  std::vector<unsigned char> buf((1 << 20) + 64);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t offset : {0, 1, 5, 16, 63}) {
    for (size_t n = 1000; n < 1800; ++n) {
      const uint32_t start = static_cast<uint32_t>(rng());
      ASSERT_EQ(Crc32(start, buf.data() + offset, n), Reference(start, buf.data() + offset, n))
          << "offset " << offset << " length " << n;
    }
  }
  for (size_t n : {size_t{1} << 20, (size_t{1} << 20) - 16, size_t{777777}, size_t{1024}, size_t{1279}, size_t{1280}}) {
    EXPECT_EQ(Crc32(0, buf.data(), n), Reference(0, buf.data(), n)) << n;
  }
}

// Where the 512-bit fold runs, the 128-bit fold's own long path (from 1 KiB) is checked too.
TEST(Crc32, The128BitFoldAloneMatchesZlibFromOneKibibyteUp) {
  std::mt19937 rng(11);
  std::vector<unsigned char> buf((1 << 16) + 64);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t offset : {0, 3, 16}) {
    for (size_t n = 1000; n < 1400; ++n) {
      const uint32_t start = static_cast<uint32_t>(rng());
      ASSERT_EQ(crc32_internal::Crc32WithoutWideFold(start, buf.data() + offset, n), Reference(start, buf.data() + offset, n))
          << "offset " << offset << " length " << n;
    }
  }
  EXPECT_EQ(crc32_internal::Crc32WithoutWideFold(0, buf.data(), 1 << 16), Reference(0, buf.data(), 1 << 16));
}

TEST(Crc32, KnownValueAndChaining) {
  const std::string s = "123456789";
  EXPECT_EQ(Crc32(0, s.data(), s.size()), 0xCBF43926u);  // the standard check value
  std::string big(100000, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  uint32_t whole = Crc32(0, big.data(), big.size());
  uint32_t split = Crc32(Crc32(0, big.data(), 333), big.data() + 333, big.size() - 333);
  EXPECT_EQ(whole, split);
  EXPECT_EQ(whole, Reference(0, reinterpret_cast<const unsigned char*>(big.data()), big.size()));
}

}  // namespace
}  // namespace ember
