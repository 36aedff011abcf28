#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "core/allocator.h"
#include "core/tensor.h"

using namespace lctx;

namespace {
std::vector<double> iota(int64_t n) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(i);
  return v;
}
}  // namespace

TEST(Tensor, ShapeStridesAndView) {
  Tensor t = Tensor::from_vector({2, 3, 4}, iota(24), DType::f32);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.str(), "f32[2,3,4]@cpu");
  Tensor v = t.view({6, -1});
  EXPECT_EQ(v.shape(), (Shape{6, 4}));
  EXPECT_EQ(v.to_vector(), t.to_vector());
  EXPECT_THROW(t.view({5, 5}), Error);
}

TEST(Tensor, SliceIsAViewAndContiguousCopies) {
  Tensor t = Tensor::from_vector({2, 3, 4}, iota(24), DType::f64);
  Tensor s = t.slice(1, 1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2, 4}));
  EXPECT_FALSE(s.is_contiguous());
  std::vector<double> expect;
  for (int b = 0; b < 2; ++b)
    for (int i = 1; i < 3; ++i)
      for (int j = 0; j < 4; ++j) expect.push_back(b * 12 + i * 4 + j);
  EXPECT_EQ(s.to_vector(), expect);
  Tensor c = s.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.to_vector(), expect);
  s.fill(-1.0);  // writes through to t
  EXPECT_EQ(t.to_vector()[4], -1.0);
  EXPECT_EQ(t.to_vector()[0], 0.0);
  EXPECT_THROW(t.slice(1, 2, 4), Error);
}

TEST(Tensor, SteppedSliceSharesMemory) {
  Tensor t = Tensor::from_vector({2, 7, 2}, iota(28), DType::f64);
  const Tensor s = t.slice(1, 1, 7, 3);  // rows 1 and 4
  ASSERT_EQ(s.shape(), Shape({2, 2, 2}));
  EXPECT_EQ(s.to_vector(), (std::vector<double>{2, 3, 8, 9, 16, 17, 22, 23}));
  EXPECT_EQ(t.slice(1, 2, 7, 5).size(1), 1);
  EXPECT_EQ(t.slice(1, 3, 3, 2).size(1), 0);
  s.slice(1, 1, 2).fill(-1.0);  // row 4 of both batch rows, through the view
  const std::vector<double> v = t.to_vector();
  EXPECT_EQ(v[8], -1.0);
  EXPECT_EQ(v[14 + 9], -1.0);
  EXPECT_EQ(v[6], 6.0);
  EXPECT_THROW(t.slice(1, 0, 7, 0), Error);
}

TEST(Tensor, AsStridedPermutesWithoutCopying) {
  Tensor t = Tensor::from_vector({2, 3, 4}, iota(24), DType::f64);
  // The transpose of the last two dims of batch row 1: element (i, j) at 12 + j * 4 + i.
  Tensor tr = t.as_strided({4, 3}, {1, 4}, 12);
  EXPECT_EQ(tr.to_vector(), (std::vector<double>{12, 16, 20, 13, 17, 21, 14, 18, 22, 15, 19, 23}));
  EXPECT_FALSE(tr.is_contiguous());
  Tensor dst = Tensor::zeros({4, 3}, DType::f64);
  dst.copy_from(tr);
  tr.add_from(dst);  // doubles batch row 1 through the permuted view
  EXPECT_EQ(t.to_vector()[13], 26.0);
  EXPECT_EQ(t.to_vector()[11], 11.0);
  // Relative to the view it is taken from.
  EXPECT_EQ(t.slice(1, 1, 3).as_strided({2}, {12}, 1).to_vector(), (std::vector<double>{5, 34}));
  EXPECT_THROW(t.as_strided({4, 3}, {1, 4}, 13), Error);  // reaches element 24
  EXPECT_THROW(t.as_strided({2}, {1, 1}), Error);         // rank mismatch
  EXPECT_THROW(t.as_strided({2}, {-1}), Error);
}

TEST(Tensor, AddFromAccumulatesThroughStrides) {
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor acc = Tensor::from_vector({2, 3, 4}, iota(24), dt);
    const Tensor src = Tensor::from_vector({2, 4, 4}, iota(32), dt).slice(1, 1, 3);  // strided source
    acc.slice(1, 1, 3).add_from(src);                                                 // strided destination
    std::vector<double> want = iota(24);
    for (int b = 0; b < 2; ++b)
      for (int i = 1; i < 3; ++i)
        for (int j = 0; j < 4; ++j) want[b * 12 + i * 4 + j] += b * 16 + i * 4 + j;
    EXPECT_EQ(acc.to_vector(), want) << dtype_name(dt);
  }
  Tensor f32 = Tensor::zeros({4}, DType::f32);
  EXPECT_THROW(f32.add_from(Tensor::zeros({5}, DType::f32)), Error);                 // shape
  EXPECT_THROW(f32.add_from(Tensor::zeros({4}, DType::f64)), Error);                 // dtype
  EXPECT_THROW(f32.add_from(Tensor::zeros({4}, DType::bf16)), Error);                // narrow: CUDA only
  EXPECT_THROW(Tensor::zeros({4}, DType::bf16).add_from(f32.to(DType::bf16)), Error);  // not an accumulator
}

TEST(Tensor, DtypeConversionRoundTrips) {
  std::vector<double> vals = {0.0, 1.0, -2.5, 3.140625, 1e-3, 65504.0, -1e-7};
  Tensor t = Tensor::from_vector({7}, vals, DType::f64);
  EXPECT_EQ(t.to(DType::f32).to(DType::f64).to_vector()[3], 3.140625);
  auto b = t.to(DType::bf16).to_vector();
  for (size_t i = 0; i < vals.size(); ++i) EXPECT_NEAR(b[i], vals[i], std::abs(vals[i]) * 4e-3) << i;
  auto h = t.to(DType::f16).to_vector();
  for (size_t i = 0; i < vals.size() - 1; ++i) EXPECT_NEAR(h[i], vals[i], std::abs(vals[i]) * 1e-3) << i;
}

TEST(Tensor, ErrorsNameTheProblem) {
  Tensor t = Tensor::zeros({2, 3}, DType::f32);
  try {
    check_shape("rmsnorm_forward", "weight", t, {3});
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("rmsnorm_forward"), std::string::npos) << m;
    EXPECT_NE(m.find("weight"), std::string::npos) << m;
    EXPECT_NE(m.find("[2,3]"), std::string::npos) << m;
    EXPECT_NE(m.find("expected [3]"), std::string::npos) << m;
  }
  EXPECT_THROW(t.data<double>(), Error);
  EXPECT_THROW(Tensor::from_vector({2}, std::vector<double>{1, 2, 3}, DType::f32), Error);
  EXPECT_THROW(Tensor::empty({-1}, DType::f32), Error);
}

TEST(Tensor, CpuMemoryStatsTrackPeak) {
  reset_peak_memory(Device::cpu());
  const size_t before = memory_stats(Device::cpu()).current_bytes;
  {
    Tensor a = Tensor::empty({1 << 20}, DType::f32);
    EXPECT_GE(memory_stats(Device::cpu()).current_bytes, before + (4u << 20));
  }
  EXPECT_EQ(memory_stats(Device::cpu()).current_bytes, before);
  EXPECT_GE(memory_stats(Device::cpu()).peak_bytes, before + (4u << 20));
}

// Poisoned blocks read as NaN in every float type and -1 in the integer ones, until written.
TEST(Tensor, PoisonedAllocationsReadAsNan) {
  const bool was = poison_alloc();
  set_poison_alloc(true);
  for (DType dt : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    const Tensor t = Tensor::empty({3, 5}, dt);
    for (double x : t.to_vector()) EXPECT_TRUE(std::isnan(x)) << dtype_name(dt);
  }
  for (double x : Tensor::empty({4}, DType::i32).to_vector()) EXPECT_EQ(x, -1);
  for (double x : Tensor::zeros({4}, DType::f32).to_vector()) EXPECT_EQ(x, 0);
  set_poison_alloc(was);
}

TEST(Tensor, CudaTensorWithoutCudaIsAClearError) {
  if (cuda_available()) GTEST_SKIP() << "GPU present";
  try {
    Tensor::empty({4}, DType::f32, Device::cuda());
#ifdef LCTX_HAVE_CUDA
    // Built with CUDA but no device: the CUDA runtime reports it.
#endif
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
  }
}
