#include <gtest/gtest.h>

#include <cmath>
#include <tuple>
#include <utility>

#include "common/check.h"
#include "core/allocator.h"
#include "core/rng.h"
#include "core/tensor.h"

using namespace lctx;

TEST(TensorGpu, CopiesAcrossDevicesAndDtypes) {
  LCTX_REQUIRE_GPU();
  Tensor h = Tensor::empty({3, 5, 7}, DType::f64);
  rng_normal(h, 1, 0);
  for (DType dt : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    Tensor d = h.to(Device::cuda()).to(dt);
    EXPECT_EQ(d.device(), Device::cuda());
    Tensor back = d.to(DType::f64).to(Device::cpu());
    EXPECT_EQ(back.to_vector(), h.to(dt).to(DType::f64).to_vector()) << dtype_name(dt);
  }
  Tensor d = h.to(Device::cuda());
  Tensor s = d.slice(1, 1, 4);
  EXPECT_EQ(s.contiguous().to_vector(), h.slice(1, 1, 4).to_vector());
  s.fill(2.0);
  EXPECT_EQ(d.to_vector()[7], 2.0);
  // Host slice into device slice.
  Tensor dst = Tensor::zeros({3, 5, 7}, DType::f32, Device::cuda());
  dst.slice(2, 2, 5).copy_from(h.slice(2, 0, 3));
  auto v = dst.to_vector();
  auto hv = h.to(DType::f32).to_vector();
  EXPECT_EQ(v[2], hv[0]);
  EXPECT_EQ(v[0], 0.0);
}

TEST(TensorGpu, RngIsBitIdenticalToCpu) {
  LCTX_REQUIRE_GPU();
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    Tensor c = Tensor::empty({4096}, dt), g = Tensor::empty({4096}, dt, Device::cuda());
    rng_normal(c, 123, 77, 0.5, 2.0);
    rng_normal(g, 123, 77, 0.5, 2.0);
    EXPECT_EQ(c.to_vector(), g.to_vector()) << dtype_name(dt);
    rng_uniform(c, 9, 0);
    rng_uniform(g, 9, 0);
    EXPECT_EQ(c.to_vector(), g.to_vector()) << dtype_name(dt);
  }
}

TEST(TensorGpu, CachingAllocatorReusesAndCounts) {
  LCTX_REQUIRE_GPU();
  const Device d = Device::cuda();
  reset_peak_memory(d);
  const auto before = memory_stats(d);
  void* first = nullptr;
  {
    Tensor a = Tensor::empty({1 << 20}, DType::f32, d);
    first = a.raw();
    EXPECT_EQ(memory_stats(d).current_bytes, before.current_bytes + (4u << 20));
  }
  EXPECT_EQ(memory_stats(d).current_bytes, before.current_bytes);
  Tensor b = Tensor::empty({1 << 20}, DType::f32, d);
  EXPECT_EQ(b.raw(), first);  // served from the cache
  EXPECT_GE(memory_stats(d).peak_bytes, before.current_bytes + (4u << 20));
}

// Poisoned CUDA blocks, fresh or reused from the cache, read as NaN until written.
TEST(TensorGpu, PoisonedAllocationsReadAsNan) {
  LCTX_REQUIRE_GPU();
  const bool was = poison_alloc();
  set_poison_alloc(true);
  void* first = nullptr;
  {
    const Tensor z = Tensor::zeros({1 << 10}, DType::f32, Device::cuda());
    first = z.raw();
    for (double x : z.to(Device::cpu()).to_vector()) ASSERT_EQ(x, 0);
  }
  const Tensor t = Tensor::empty({1 << 11}, DType::bf16, Device::cuda());  // the zeroed block again
  EXPECT_EQ(t.raw(), first);
  for (double x : t.to(Device::cpu()).to_vector()) ASSERT_TRUE(std::isnan(x));
  set_poison_alloc(was);
}

TEST(TensorGpu, StreamOrderedScratchIsCounted) {
  LCTX_REQUIRE_GPU();
  const Device d = Device::cuda();
  const auto before = memory_stats(d);
  void* p = allocate_async(3 << 20, d, {});
  EXPECT_GE(memory_stats(d).current_bytes, before.current_bytes + (3u << 20));
  EXPECT_GE(memory_stats(d).reserved_bytes, before.reserved_bytes);
  deallocate_async(p, d, {});
  EXPECT_EQ(memory_stats(d).current_bytes, before.current_bytes);
  EXPECT_THROW(deallocate_async(p, d, {}), Error);  // already returned
}

// Copies between views whose layouts coalesce differently (size-1 dims, row slices, column
// slices) and across dtypes give the element-by-element result, as on the CPU.
TEST(TensorGpu, StridedCopiesMatchCpu) {
  LCTX_REQUIRE_GPU();
  Tensor h = Tensor::empty({1, 6, 5, 8}, DType::f32);
  rng_normal(h, 3, 0);
  const Tensor d = h.to(Device::cuda());
  for (auto [dim, a, b] : {std::tuple{1, 2, 5}, std::tuple{2, 1, 4}, std::tuple{3, 0, 8}}) {
    const Tensor want = h.slice(dim, a, b).contiguous();
    Tensor got = Tensor::empty(want.shape(), DType::bf16, Device::cuda());
    got.copy_from(d.slice(dim, a, b));
    EXPECT_EQ(got.to(DType::f32).to_vector(), want.to(DType::bf16).to(DType::f32).to_vector()) << dim;
    Tensor back = Tensor::zeros(h.shape(), DType::f32, Device::cuda());
    back.slice(dim, a, b).copy_from(got);
    Tensor expect = Tensor::zeros(h.shape(), DType::f32);
    expect.slice(dim, a, b).copy_from(want.to(DType::bf16));
    EXPECT_EQ(back.to_vector(), expect.to_vector()) << dim;
  }
}

TEST(TensorGpu, SameDtypeRowCopiesMatchCpu) {  // the 2D-memcpy path: rows contiguous on both sides
  LCTX_REQUIRE_GPU();
  Tensor h = Tensor::empty({2, 6, 5, 8}, DType::f32);
  rng_normal(h, 4, 0);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor hd = h.to(dt), d = hd.to(Device::cuda());
    for (auto [dim, a, b] : {std::tuple{1, 2, 5}, std::tuple{2, 1, 4}, std::tuple{3, 2, 6}}) {
      Tensor got = Tensor::empty(hd.slice(dim, a, b).shape(), dt, Device::cuda());
      got.copy_from(d.slice(dim, a, b));  // strided source
      EXPECT_EQ(got.to_vector(), hd.slice(dim, a, b).contiguous().to_vector()) << dim;
      Tensor back = Tensor::zeros(h.shape(), dt, Device::cuda()), expect = Tensor::zeros(h.shape(), dt);
      back.slice(dim, a, b).copy_from(got);  // strided destination
      expect.slice(dim, a, b).copy_from(hd.slice(dim, a, b));
      EXPECT_EQ(back.to_vector(), expect.to_vector()) << dim;
      Tensor both = Tensor::zeros(h.shape(), dt, Device::cuda());
      both.slice(dim, a, b).copy_from(d.slice(dim, a, b));  // strided on both sides
      EXPECT_EQ(both.to_vector(), expect.to_vector()) << dim;
    }
  }
}

// Views by as_strided: a row repeated (stride 0, which the 2D copy refuses) and a permutation.
TEST(TensorGpu, AsStridedCopiesMatchCpu) {
  LCTX_REQUIRE_GPU();
  Tensor h = Tensor::empty({3, 4, 8}, DType::f32);
  rng_normal(h, 5, 0);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor hd = h.to(dt), d = hd.to(Device::cuda());
    for (auto [shape, strides] : {std::pair{Shape{5, 4, 8}, Shape{0, 8, 1}}, std::pair{Shape{4, 3, 8}, Shape{8, 32, 1}},
                                  std::pair{Shape{8, 12}, Shape{1, 8}}}) {
      Tensor got = Tensor::empty(shape, dt, Device::cuda());
      got.copy_from(d.as_strided(shape, strides));
      EXPECT_EQ(got.to_vector(), hd.as_strided(shape, strides).contiguous().to_vector()) << shape_str(shape);
    }
  }
}

TEST(TensorGpu, AddFromMatchesCpu) {
  LCTX_REQUIRE_GPU();
  Tensor acc = Tensor::empty({2, 6, 5, 8}, DType::f32), g = Tensor::empty({2, 3, 5, 8}, DType::f32);
  rng_normal(acc, 5, 0);
  rng_normal(g, 6, 0);
  for (DType src_dt : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor src = g.to(src_dt);  // narrow gradients are added exactly as their f32 values
    Tensor want = acc.clone();
    want.slice(1, 2, 5).add_from(src.to(DType::f32));
    Tensor got = acc.to(Device::cuda());
    got.slice(1, 2, 5).add_from(src.to(Device::cuda()));
    EXPECT_EQ(got.to_vector(), want.to_vector()) << dtype_name(src_dt);
  }
  // All contiguous (the flat kernel), then a strided source into a contiguous destination.
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor a = acc.to(dt), src = g.to(dt);
    Tensor want = a.slice(1, 0, 3).contiguous(), got = want.to(Device::cuda());
    want.add_from(src);
    got.add_from(src.to(Device::cuda()));
    want.add_from(a.slice(1, 3, 6));
    got.add_from(a.to(Device::cuda()).slice(1, 3, 6));
    EXPECT_EQ(got.to_vector(), want.to_vector()) << dtype_name(dt);
  }
  // f32 added into bf16/f16 rows: summed in f32 and rounded once (the f32 sum, then to_dtype).
  for (DType dt : {DType::bf16, DType::f16}) {
    const Tensor narrow = acc.to(dt);
    Tensor want = narrow.to(DType::f32);
    want.slice(1, 2, 5).add_from(g);
    Tensor got = narrow.to(Device::cuda());
    got.slice(1, 2, 5).add_from(g.to(Device::cuda()));
    EXPECT_EQ(got.to_vector(), want.to(dt).to_vector()) << dtype_name(dt);
  }
}
