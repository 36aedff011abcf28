// SwiGLU, GELU (tanh) and the residual add: forward against the formulas, fp64
// finite-difference backward checks over odd shapes, validation messages.
#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "common/gradcheck.h"
#include "ops/gelu.h"
#include "ops/residual.h"
#include "ops/swiglu.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

class ElementwiseShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(ElementwiseShapes, SwiGlu) {
  Shape half = GetParam(), packed = GetParam();
  packed.back() *= 2;
  const int64_t f = half.back();
  Tensor in = randn(packed, 1, DType::f64, 0.0, 2.0), out = Tensor::empty(half, DType::f64), r = randn(half, 2);
  swiglu_forward(out, in);
  const auto iv = in.to_vector(), ov = out.to_vector();
  for (int64_t i = 0; i < out.numel(); ++i) {
    const int64_t row = i / f, col = i % f;
    const double g = iv[row * 2 * f + col], u = iv[row * 2 * f + f + col];
    EXPECT_NEAR(ov[i], g / (1 + std::exp(-g)) * u, 1e-13);
  }
  auto loss = [&] {
    swiglu_forward(out, in);
    return dot(out, r);
  };
  Tensor din = Tensor::empty(packed, DType::f64);
  swiglu_backward(din, r, in);
  test::expect_grad_close(loss, in, din, "din");
}

TEST_P(ElementwiseShapes, Gelu) {
  const Shape s = GetParam();
  Tensor x = randn(s, 3, DType::f64, 0.0, 2.0), out = Tensor::empty(s, DType::f64), r = randn(s, 4);
  gelu_forward(out, x);
  const auto xv = x.to_vector(), ov = out.to_vector();
  for (size_t i = 0; i < xv.size(); ++i) {
    const double v = xv[i];
    EXPECT_NEAR(ov[i], 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))), 1e-13);
  }
  auto loss = [&] {
    gelu_forward(out, x);
    return dot(out, r);
  };
  Tensor dx = Tensor::empty(s, DType::f64);
  gelu_backward(dx, r, x);
  test::expect_grad_close(loss, x, dx, "dx");
}

TEST_P(ElementwiseShapes, Residual) {
  const Shape s = GetParam();
  Tensor a = randn(s, 5), b = randn(s, 6), out = Tensor::empty(s, DType::f64), r = randn(s, 7);
  residual_forward(out, a, b);
  const auto av = a.to_vector(), bv = b.to_vector(), ov = out.to_vector();
  for (size_t i = 0; i < av.size(); ++i) EXPECT_EQ(ov[i], av[i] + bv[i]);
  auto loss = [&] {
    residual_forward(out, a, b);
    return dot(out, r);
  };
  Tensor da = Tensor::full(s, 3.0, DType::f64), db = Tensor::empty(s, DType::f64);
  residual_backward(da, db, r, GradMode::overwrite);
  test::expect_grad_close(loss, a, da, "da");
  test::expect_grad_close(loss, b, db, "db");
  Tensor none;
  residual_backward(da, none, r, GradMode::accumulate);
  const auto rv = r.to_vector(), dav = da.to_vector();
  for (size_t i = 0; i < rv.size(); ++i) EXPECT_EQ(dav[i], 2 * rv[i]);
}

INSTANTIATE_TEST_SUITE_P(Ops, ElementwiseShapes, ::testing::Values(Shape{1}, Shape{3, 5}, Shape{2, 3, 7}, Shape{129}));

TEST(Elementwise, RejectsBadInputs) {
  Tensor in = randn({4, 7}, 1, DType::f32), out = Tensor::empty({4, 3}, DType::f32);
  test::expect_error([&] { swiglu_forward(out, in); }, {"swiglu_forward", "in", "[..., 2F]"});
  Tensor in2 = randn({4, 6}, 1, DType::f32), out2 = Tensor::empty({4, 6}, DType::f32);
  test::expect_error([&] { swiglu_forward(out2, in2); }, {"swiglu_forward", "out", "expected [4,3]"});
  Tensor x = randn({5}, 1, DType::f32), y64 = Tensor::empty({5}, DType::f64);
  test::expect_error([&] { gelu_forward(y64, x); }, {"gelu_forward", "out", "f32"});
  Tensor a = randn({5}, 1, DType::f32), b = randn({6}, 2, DType::f32), o = Tensor::empty({5}, DType::f32);
  test::expect_error([&] { residual_forward(o, a, b); }, {"residual_forward", "b", "expected [5]"});
}

}  // namespace
