#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/dtype.h"

using namespace lctx;

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16(1.0f).bits, 0x3f80);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(static_cast<float>(bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(static_cast<float>(bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(static_cast<float>(bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(static_cast<float>(bf16(std::numeric_limits<float>::infinity()))));
}

TEST(DType, F16ExactValuesAndRounding) {
  for (float v : {0.0f, 1.0f, -2.0f, 0.5f, 65504.0f, 6.103515625e-05f /*min normal*/, 5.960464477539063e-08f /*min subnormal*/})
    EXPECT_EQ(static_cast<float>(f16(v)), v) << v;
  EXPECT_EQ(f16(1.0f).bits, 0x3c00);
  EXPECT_EQ(f16(-2.0f).bits, 0xc000);
  EXPECT_TRUE(std::isinf(static_cast<float>(f16(70000.0f))));
  EXPECT_TRUE(std::isinf(static_cast<float>(f16(65520.0f))));  // rounds up past max
  EXPECT_EQ(static_cast<float>(f16(65519.0f)), 65504.0f);
  EXPECT_EQ(static_cast<float>(f16(1.0f + 1.0f / 2048)), 1.0f);  // tie to even
  EXPECT_EQ(static_cast<float>(f16(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);
  EXPECT_TRUE(std::isnan(static_cast<float>(f16(std::nanf("")))));
  // Every half value survives half -> float -> half.
  for (uint32_t b = 0; b < 0x10000; ++b) {
    f16 h;
    h.bits = static_cast<uint16_t>(b);
    const float f = static_cast<float>(h);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f16(f).bits, h.bits) << std::hex << b;
  }
}

TEST(DType, WideDtypeKeepsF64AndWidensTheRestToF32) {
  static_assert(wide_dtype(DType::f64) == DType::f64);
  for (DType t : {DType::f32, DType::bf16, DType::f16}) EXPECT_EQ(wide_dtype(t), DType::f32) << dtype_name(t);
}

TEST(DType, NamesRoundTrip) {
  for (DType t : {DType::f64, DType::f32, DType::bf16, DType::f16}) EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_THROW(dtype_from_name("fp32"), Error);
}
