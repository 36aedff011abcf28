// ops::row_pool on CUDA (f32) against the CPU in f32: the same sums in the same order, so equal
// to rounding of the scale's products; rows without a bucket, buckets without rows.
#include <gtest/gtest.h>

#include <vector>

#include "common/check.h"
#include "core/cuda_check.h"
#include "ops/row_pool.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

namespace {

TEST(RowPoolGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  const Device gpu = Device::cuda(0);
  const int64_t B = 2, L = 300, N = 19, R = 96;
  std::vector<int64_t> of(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) of[static_cast<size_t>(l)] = (l * 7) % 23 < N ? (l * 7) % 23 : -1;
  const Tensor rows = randn({B, L, R}, 1, DType::f32), init = randn({B, N, R}, 2, DType::f32);
  const Tensor grad = randn({B, N, R}, 3, DType::f32), rows0 = randn({B, L, R}, 4, DType::f32);
  auto pool = [&](Device dev) {
    const RowBuckets ix = row_buckets(of, N, dev);
    Tensor buckets = Tensor::empty(init.shape(), DType::f32, dev), d_rows = Tensor::empty(rows0.shape(), DType::f32, dev);
    buckets.copy_from(init);  // fresh copies: the ops accumulate into them
    d_rows.copy_from(rows0);
    row_pool_forward(buckets, rows.to(dev), ix, 0.125);
    row_pool_backward(d_rows, grad.to(dev), ix, 0.125);
    return std::pair{buckets.to(Device::cpu()), d_rows.to(Device::cpu())};
  };
  const auto [cb, cr] = pool(Device::cpu());
  const auto [gb, gr] = pool(gpu);
  LCTX_EXPECT_CLOSE(gb, cb, 1e-6);
  LCTX_EXPECT_CLOSE(gr, cr, 1e-6);
}

}  // namespace
