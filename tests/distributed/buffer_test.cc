#include "distributed/buffer.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "gtest/gtest.h"

namespace ember::dist {
namespace {

TEST(Buffer, SizesNamesAndDescription) {
  EXPECT_EQ(DTypeSize(DType::kFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kInt64), 8u);
  float x[3];
  EXPECT_EQ(Buffer::Host(x, 3).bytes(), 12u);
  EXPECT_EQ(Buffer::Host(x, 3).DebugString(), "float32[3] on the host");
  EXPECT_EQ((Buffer{x, DType::kBFloat16, 8, 1}).DebugString(), "bfloat16[8] on cuda:1");
}

TEST(Buffer, HalfRoundTripsEveryHalf) {
  // Every finite float16 widens and narrows back to itself.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) continue;  // NaN payloads
    EXPECT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(Buffer, HalfRounding) {
  EXPECT_EQ(HalfToFloat(FloatToHalf(1.0f)), 1.0f);
  EXPECT_EQ(HalfToFloat(0x3c01), 1.0f + 1.0f / 1024);
  // Ties go to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048), 0x3c02);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);      // the largest half
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);      // rounds up to infinity
  EXPECT_EQ(FloatToHalf(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // the smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // a tie, to even
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
}

TEST(Buffer, BFloat16Rounding) {
  EXPECT_EQ(BFloat16ToFloat(FloatToBFloat16(1.0f)), 1.0f);
  EXPECT_EQ(FloatToBFloat16(1.0f + 1.0f / 256), 0x3f80);  // a tie, to even
  EXPECT_EQ(FloatToBFloat16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_EQ(FloatToBFloat16(3.0e38f), 0x7f62);  // as torch.tensor([3e38]).to(torch.bfloat16)
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(BFloat16ToFloat(FloatToBFloat16(std::numeric_limits<float>::infinity()))));
}

}  // namespace
}  // namespace ember::dist
