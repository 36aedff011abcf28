// Rotary embedding: forward against the half-split formula, [S] and [B, S] positions, that a
// sequence shard with offset / zigzag-permuted global positions equals the matching rows of
// the unsharded result, norm preservation, fp64 finite-difference backward, validation.
#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "common/gradcheck.h"
#include "ops/rope.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

Tensor positions(std::vector<double> p, Shape shape) { return Tensor::from_vector(shape, p, DType::i32); }

std::vector<double> iota(int64_t n, int64_t start = 0) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(start + i);
  return v;
}

struct RopeCase {
  int64_t b, s, h, d;
};
class RopeShapes : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeShapes, ForwardFormulaAndGradient) {
  const auto [b, s, h, d] = GetParam();
  const double theta = 500.0;
  Tensor x = randn({b, s, h, d}, 1), out = Tensor::empty({b, s, h, d}, DType::f64), r = randn({b, s, h, d}, 2);
  std::vector<double> pv(b * s);
  for (int64_t i = 0; i < b * s; ++i) pv[i] = static_cast<double>((i * 37) % 1000 + 5);
  Tensor pos = positions(pv, {b, s});
  rope_forward(out, x, pos, theta);
  const auto xv = x.to_vector(), ov = out.to_vector();
  const int64_t half = d / 2;
  for (int64_t bs = 0; bs < b * s; ++bs)
    for (int64_t hh = 0; hh < h; ++hh)
      for (int64_t i = 0; i < half; ++i) {
        const double a = pv[bs] * std::pow(theta, -2.0 * i / d);
        const int64_t o = (bs * h + hh) * d + i;
        EXPECT_NEAR(ov[o], xv[o] * std::cos(a) - xv[o + half] * std::sin(a), 1e-12);
        EXPECT_NEAR(ov[o + half], xv[o] * std::sin(a) + xv[o + half] * std::cos(a), 1e-12);
      }
  auto loss = [&] {
    rope_forward(out, x, pos, theta);
    return dot(out, r);
  };
  Tensor dx = Tensor::empty({b, s, h, d}, DType::f64);
  rope_backward(dx, r, pos, theta);
  test::expect_grad_close(loss, x, dx, "dx");
  // Backward of forward is the identity (rotation by -a undoes +a), in place.
  rope_forward(out, x, pos, theta);
  rope_backward(out, out, pos, theta);
  LCTX_EXPECT_CLOSE(out, x, 1e-13);
}

INSTANTIATE_TEST_SUITE_P(Ops, RopeShapes,
                         ::testing::Values(RopeCase{1, 1, 1, 2}, RopeCase{2, 3, 2, 8}, RopeCase{1, 5, 3, 6}));

TEST(Rope, ShardsWithGlobalPositionsMatchTheFullSequence) {
  const int64_t b = 2, s = 16, h = 3, d = 16;
  Tensor x = randn({b, s, h, d}, 3, DType::f32), full = Tensor::empty({b, s, h, d}, DType::f32);
  rope_forward(full, x, positions(iota(s, 100000), {s}));  // large offset: long-context positions
  // Contiguous shard [4, 12) with global positions.
  Tensor shard = x.slice(1, 4, 12).contiguous(), out = Tensor::empty({b, 8, h, d}, DType::f32);
  rope_forward(out, shard, positions(iota(8, 100004), {8}));
  LCTX_EXPECT_CLOSE(out, full.slice(1, 4, 12).contiguous(), 1e-7);
  // Zigzag shard: chunks 1 and 6 of 8 chunks of 2 (rank 1 of 4), per-batch positions [B, S].
  std::vector<int64_t> rows = {2, 3, 12, 13};
  Tensor zz = Tensor::empty({b, 4, h, d}, DType::f32), zout = Tensor::empty({b, 4, h, d}, DType::f32);
  std::vector<double> zpos;
  for (int64_t bb = 0; bb < b; ++bb)
    for (int64_t r : rows) zpos.push_back(100000.0 + r);
  for (size_t i = 0; i < rows.size(); ++i) zz.slice(1, i, i + 1).copy_from(x.slice(1, rows[i], rows[i] + 1));
  rope_forward(zout, zz, positions(zpos, {b, 4}));
  for (size_t i = 0; i < rows.size(); ++i)
    LCTX_EXPECT_CLOSE(zout.slice(1, i, i + 1).contiguous(), full.slice(1, rows[i], rows[i] + 1).contiguous(), 1e-7);
}

TEST(Rope, PreservesNormsAndRejectsBadInputs) {
  Tensor x = randn({1, 4, 2, 8}, 4), out = Tensor::empty({1, 4, 2, 8}, DType::f64);
  rope_forward(out, x, positions(iota(4, 7), {4}));
  EXPECT_NEAR(dot(out, out), dot(x, x), 1e-10);
  Tensor bad_pos = positions(iota(3), {3});
  test::expect_error([&] { rope_forward(out, x, bad_pos); }, {"rope_forward", "positions", "must be [4] or [1,4]"});
  Tensor pos64 = Tensor::zeros({4}, DType::i64);
  test::expect_error([&] { rope_forward(out, x, pos64); }, {"rope_forward", "positions", "i32"});
  Tensor odd = randn({1, 4, 2, 7}, 4), odd_out = Tensor::empty({1, 4, 2, 7}, DType::f64);
  test::expect_error([&] { rope_forward(odd_out, odd, positions(iota(4), {4})); }, {"rope_forward", "even D"});
}

}  // namespace
