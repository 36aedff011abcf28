// matmul (blocked CPU GEMM) and linear: forward against a naive triple loop, fp64
// finite-difference gradients, GradMode accumulate, and input validation.
#include <gtest/gtest.h>

#include "common/check.h"
#include "common/gradcheck.h"
#include "ops/linear.h"
#include "ops/matmul.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

// c = alpha op(a) op(b) + beta c0, naively in f64.
std::vector<double> naive_gemm(const Tensor& a, const Tensor& b, const Tensor& c0, Trans ta, Trans tb, double alpha,
                               double beta) {
  const auto va = a.to_vector(), vb = b.to_vector(), vc = c0.to_vector();
  const bool at = ta == Trans::transpose, bt = tb == Trans::transpose;
  const int64_t m = at ? a.size(1) : a.size(0), k = at ? a.size(0) : a.size(1), n = bt ? b.size(0) : b.size(1);
  std::vector<double> out(m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t l = 0; l < k; ++l) s += va[at ? l * m + i : i * k + l] * vb[bt ? j * k + l : l * n + j];
      out[i * n + j] = alpha * s + beta * vc[i * n + j];
    }
  return out;
}

struct GemmCase {
  int64_t m, n, k;
};

class MatmulShapes : public ::testing::TestWithParam<GemmCase> {};

TEST_P(MatmulShapes, MatchesNaiveForAllTransposes) {
  const auto [m, n, k] = GetParam();
  for (DType dt : {DType::f64, DType::f32}) {
    for (Trans ta : {Trans::none, Trans::transpose}) {
      for (Trans tb : {Trans::none, Trans::transpose}) {
        Tensor a = randn(ta == Trans::none ? Shape{m, k} : Shape{k, m}, 1, dt);
        Tensor b = randn(tb == Trans::none ? Shape{k, n} : Shape{n, k}, 2, dt);
        Tensor c = randn({m, n}, 3, dt);
        const auto expect = naive_gemm(a, b, c, ta, tb, 0.5, 2.0);
        matmul(c, a, b, ta, tb, 0.5f, 2.0f);
        const auto got = c.to_vector();
        double worst = 0, scale = 1e-30;
        for (size_t i = 0; i < got.size(); ++i) {
          worst = std::max(worst, std::abs(got[i] - expect[i]));
          scale = std::max(scale, std::abs(expect[i]));
        }
        EXPECT_LE(worst / scale, dt == DType::f64 ? 1e-13 : 2e-6)
            << dtype_name(dt) << " ta=" << int(ta) << " tb=" << int(tb);
      }
    }
  }
}

// Odd sizes, sizes straddling the 64/256/128 tile edges, degenerate ones.
INSTANTIATE_TEST_SUITE_P(Ops, MatmulShapes,
                         ::testing::Values(GemmCase{1, 1, 1}, GemmCase{3, 5, 7}, GemmCase{65, 257, 129},
                                           GemmCase{130, 33, 300}, GemmCase{1, 300, 1}, GemmCase{7, 3, 0}));

TEST(Matmul, BetaZeroIgnoresNaNInOutput) {
  Tensor a = randn({4, 3}, 1), b = randn({3, 5}, 2);
  Tensor c = Tensor::full({4, 5}, NAN, DType::f64);
  matmul(c, a, b);
  for (double v : c.to_vector()) EXPECT_TRUE(std::isfinite(v));
}

TEST(Matmul, RejectsBadInputs) {
  Tensor a = randn({4, 3}, 1), b = randn({5, 5}, 2), c = Tensor::empty({4, 5}, DType::f64);
  test::expect_error([&] { matmul(c, a, b); }, {"matmul", "inner dimensions", "[4,3]"});
  Tensor bf = randn({3, 5}, 2, DType::f32);
  test::expect_error([&] { matmul(c, a, bf); }, {"matmul", "b", "f64"});
  Tensor bi = Tensor::zeros({3, 5}, DType::i32);
  test::expect_error([&] { matmul(c, a, bi); }, {"matmul", "b", "f32 or f64"});
  Tensor c2 = Tensor::empty({5, 4}, DType::f64);
  Tensor b2 = randn({3, 4}, 2);
  test::expect_error([&] { matmul(c2, a, b2); }, {"matmul", "c", "[5,4]", "expected [4,4]"});
}

struct LinearCase {
  Shape x;
  int64_t n;
  bool bias;
};

class LinearGrad : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearGrad, FiniteDifferences) {
  const auto& [xs, n, has_bias] = GetParam();
  const int64_t k = xs.back();
  Tensor x = randn(xs, 10), w = randn({n, k}, 11);
  Tensor bias = has_bias ? randn({n}, 12) : Tensor();
  Shape ys = xs;
  ys.back() = n;
  Tensor y = Tensor::empty(ys, DType::f64), r = randn(ys, 13);
  auto loss = [&] {
    linear_forward(y, x, w, bias);
    return dot(y, r);
  };
  // Forward against the naive formula.
  loss();
  const auto xv = x.to_vector(), wv = w.to_vector(), yv = y.to_vector();
  const auto bv = has_bias ? bias.to_vector() : std::vector<double>(n, 0.0);
  for (int64_t row = 0; row < x.numel() / k; ++row)
    for (int64_t j = 0; j < n; ++j) {
      double s = bv[j];
      for (int64_t l = 0; l < k; ++l) s += xv[row * k + l] * wv[j * k + l];
      EXPECT_NEAR(yv[row * n + j], s, 1e-12);
    }
  Tensor dx = Tensor::empty(xs, DType::f64), dw = Tensor::empty({n, k}, DType::f64);
  Tensor db = has_bias ? Tensor::empty({n}, DType::f64) : Tensor();
  linear_backward(dx, dw, db, r, x, w, GradMode::overwrite);
  test::expect_grad_close(loss, x, dx, "dx");
  test::expect_grad_close(loss, w, dw, "dw");
  if (has_bias) test::expect_grad_close(loss, bias, db, "dbias");
}

INSTANTIATE_TEST_SUITE_P(Ops, LinearGrad,
                         ::testing::Values(LinearCase{{1, 1}, 1, true}, LinearCase{{3, 5}, 7, true},
                                           LinearCase{{2, 3, 9}, 4, false}, LinearCase{{5, 13}, 11, true}));

TEST(Linear, AccumulateAddsAndSkipsUndefined) {
  Tensor x = randn({6, 5}, 1, DType::f32), w = randn({4, 5}, 2, DType::f32), dy = randn({6, 4}, 3, DType::f32);
  Tensor dw = Tensor::empty({4, 5}, DType::f32), db = Tensor::empty({4}, DType::f32), none;
  linear_backward(none, dw, db, dy, x, w, GradMode::overwrite);
  const Tensor dw1 = dw.clone(), db1 = db.clone();
  linear_backward(none, dw, db, dy, x, w, GradMode::accumulate);
  const auto v1 = dw1.to_vector(), v2 = dw.to_vector();
  for (size_t i = 0; i < v1.size(); ++i) EXPECT_NEAR(v2[i], 2 * v1[i], 1e-5);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(db.to_vector()[i], 2 * db1.to_vector()[i], 1e-5);
}

TEST(Linear, RejectsBadInputs) {
  Tensor x = randn({6, 5}, 1, DType::f32), w = randn({4, 5}, 2, DType::f32);
  Tensor y = Tensor::empty({6, 3}, DType::f32), none;
  test::expect_error([&] { linear_forward(y, x, w, none); }, {"linear_forward", "y", "[6,3]", "expected [6,4]"});
  Tensor y4 = Tensor::empty({6, 4}, DType::f32), bias = Tensor::zeros({5}, DType::f32);
  test::expect_error([&] { linear_forward(y4, x, w, bias); }, {"linear_forward", "bias", "expected [4]"});
  Tensor w64 = randn({4, 5}, 2, DType::f64);
  test::expect_error([&] { linear_forward(y4, x, w64, none); }, {"linear_forward", "w", "f32"});
  Tensor dw_bad = Tensor::empty({4, 5}, DType::f64), dy = randn({6, 4}, 3, DType::f32);
  test::expect_error([&] { linear_backward(none, dw_bad, none, dy, x, w, GradMode::overwrite); },
                     {"linear_backward", "dw", "f32"});
}

}  // namespace
