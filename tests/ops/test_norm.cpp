// RMSNorm and LayerNorm: forward against the textbook formula (including the saved mean/rstd),
// fp64 finite-difference checks of dx, dw, db over odd shapes, and validation messages.
#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "common/gradcheck.h"
#include "ops/layernorm.h"
#include "ops/rmsnorm.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

class NormShapes : public ::testing::TestWithParam<Shape> {};

int64_t rows(const Shape& s) {
  int64_t r = 1;
  for (size_t i = 0; i + 1 < s.size(); ++i) r *= s[i];
  return r;
}

TEST_P(NormShapes, RmsNorm) {
  const Shape xs = GetParam();
  const int64_t c = xs.back(), n = rows(xs);
  const float eps = 1e-5f;
  Tensor x = randn(xs, 1, DType::f64, 0.3), w = randn({c}, 2, DType::f64, 1.0, 0.5);
  Tensor out = Tensor::empty(xs, DType::f64), rstd = Tensor::empty({n}, DType::f64), r = randn(xs, 3);
  rmsnorm_forward(out, rstd, x, w, eps);
  const auto xv = x.to_vector(), wv = w.to_vector(), ov = out.to_vector(), rv = rstd.to_vector();
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < c; ++j) ss += xv[i * c + j] * xv[i * c + j];
    const double rs = 1.0 / std::sqrt(ss / c + static_cast<double>(eps));
    EXPECT_NEAR(rv[i], rs, 1e-12 * rs);
    for (int64_t j = 0; j < c; ++j) EXPECT_NEAR(ov[i * c + j], xv[i * c + j] * rs * wv[j], 1e-12);
  }
  auto loss = [&] {
    rmsnorm_forward(out, rstd, x, w, eps);
    return dot(out, r);
  };
  Tensor dx = Tensor::empty(xs, DType::f64), dw = Tensor::empty({c}, DType::f64);
  rmsnorm_forward(out, rstd, x, w, eps);
  rmsnorm_backward(dx, dw, r, x, w, rstd, GradMode::overwrite);
  test::expect_grad_close(loss, x, dx, "dx");
  test::expect_grad_close(loss, w, dw, "dw");
}

TEST_P(NormShapes, LayerNorm) {
  const Shape xs = GetParam();
  const int64_t c = xs.back(), n = rows(xs);
  const float eps = 1e-5f;
  Tensor x = randn(xs, 4, DType::f64, 0.7, 2.0), w = randn({c}, 5, DType::f64, 1.0, 0.5), b = randn({c}, 6);
  Tensor out = Tensor::empty(xs, DType::f64), mean = Tensor::empty({n}, DType::f64);
  Tensor rstd = Tensor::empty({n}, DType::f64), r = randn(xs, 7);
  layernorm_forward(out, mean, rstd, x, w, b, eps);
  const auto xv = x.to_vector(), wv = w.to_vector(), bv = b.to_vector(), ov = out.to_vector();
  for (int64_t i = 0; i < n; ++i) {
    double mu = 0, var = 0;
    for (int64_t j = 0; j < c; ++j) mu += xv[i * c + j] / c;
    for (int64_t j = 0; j < c; ++j) var += (xv[i * c + j] - mu) * (xv[i * c + j] - mu) / c;
    const double rs = 1.0 / std::sqrt(var + static_cast<double>(eps));
    EXPECT_NEAR(mean.to_vector()[i], mu, 1e-12);
    EXPECT_NEAR(rstd.to_vector()[i], rs, 1e-10 * rs);
    for (int64_t j = 0; j < c; ++j) EXPECT_NEAR(ov[i * c + j], (xv[i * c + j] - mu) * rs * wv[j] + bv[j], 1e-10);
  }
  auto loss = [&] {
    layernorm_forward(out, mean, rstd, x, w, b, eps);
    return dot(out, r);
  };
  Tensor dx = Tensor::empty(xs, DType::f64), dw = Tensor::empty({c}, DType::f64), db = Tensor::empty({c}, DType::f64);
  layernorm_forward(out, mean, rstd, x, w, b, eps);
  layernorm_backward(dx, dw, db, r, x, w, mean, rstd, GradMode::overwrite);
  test::expect_grad_close(loss, x, dx, "dx");
  test::expect_grad_close(loss, w, dw, "dw");
  test::expect_grad_close(loss, b, db, "db");
  // Accumulate doubles the weight gradients.
  const auto dw1 = dw.to_vector();
  layernorm_backward(dx, dw, db, r, x, w, mean, rstd, GradMode::accumulate);
  for (int64_t j = 0; j < c; ++j) EXPECT_NEAR(dw.to_vector()[j], 2 * dw1[j], 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Ops, NormShapes,
                         ::testing::Values(Shape{1, 2}, Shape{3, 7}, Shape{2, 3, 16}, Shape{4, 33}, Shape{65}));

TEST(Norm, RejectsBadInputs) {
  Tensor x = randn({4, 8}, 1, DType::f32), w = randn({8}, 2, DType::f32), out = Tensor::empty({4, 8}, DType::f32);
  Tensor rstd = Tensor::empty({4}, DType::f32);
  Tensor w_bad = randn({7}, 2, DType::f32);
  test::expect_error([&] { rmsnorm_forward(out, rstd, x, w_bad); }, {"rmsnorm_forward", "w", "expected [8]"});
  Tensor rstd_bad = Tensor::empty({4}, DType::f64);
  test::expect_error([&] { rmsnorm_forward(out, rstd_bad, x, w); }, {"rmsnorm_forward", "rstd", "f32"});
  Tensor xi = Tensor::zeros({4, 8}, DType::i32);
  test::expect_error([&] { rmsnorm_forward(out, rstd, xi, w); }, {"rmsnorm_forward", "x", "f32 or f64"});
  Tensor mean_bad = Tensor::empty({5}, DType::f32), none;
  test::expect_error([&] { layernorm_forward(out, mean_bad, rstd, x, w, none); },
                     {"layernorm_forward", "mean", "expected [4]"});
  Tensor strided = randn({4, 16}, 1, DType::f32).slice(1, 0, 8);
  test::expect_error([&] { rmsnorm_forward(out, rstd, strided, w); }, {"rmsnorm_forward", "x", "contiguous"});
}

}  // namespace
