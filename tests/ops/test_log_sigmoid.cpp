// ops::log_sigmoid on the CPU: values against log(1 / (1 + e^-x)) (and finite far out, where the
// naive formula overflows or rounds to 0), the f64 finite-difference gradient (into x's dtype and,
// on f32, the wide dtype of a parameter gradient), bad inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "common/gradcheck.h"
#include "ops/log_sigmoid.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

class LogSigmoidShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(LogSigmoidShapes, ValuesAndGradient) {
  const Shape s = GetParam();
  Tensor x = randn(s, 3, DType::f64, 0.0, 3.0), y = Tensor::empty(s, DType::f64), r = randn(s, 4);
  log_sigmoid_forward(y, x);
  const auto xv = x.to_vector(), yv = y.to_vector();
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_NEAR(yv[i], -std::log1p(std::exp(-xv[i])), 1e-14) << xv[i];
  auto loss = [&] {
    log_sigmoid_forward(y, x);
    return dot(y, r);
  };
  Tensor dx = Tensor::empty(s, DType::f64);
  log_sigmoid_backward(dx, r, x);
  test::expect_grad_close(loss, x, dx, "dx");
}

INSTANTIATE_TEST_SUITE_P(Ops, LogSigmoidShapes, ::testing::Values(Shape{1}, Shape{3, 5}, Shape{2, 3, 7}, Shape{129}));

TEST(LogSigmoid, FiniteFarOut) {
  const Tensor x = Tensor::from_vector({4}, std::vector<double>{-800.0, -40.0, 40.0, 800.0}, DType::f32);
  Tensor y = Tensor::empty({4}, DType::f32), dx = Tensor::empty({4}, DType::f32);
  log_sigmoid_forward(y, x);
  const auto v = y.to_vector();
  EXPECT_FLOAT_EQ(v[0], -800.0f);
  EXPECT_FLOAT_EQ(v[1], -40.0f);
  EXPECT_NEAR(v[2], -std::exp(-40.0), 1e-20);
  EXPECT_EQ(v[3], 0.0f);
  log_sigmoid_backward(dx, Tensor::full({4}, 1.0, DType::f32), x);
  const auto g = dx.to_vector();
  EXPECT_FLOAT_EQ(g[0], 1.0f);
  EXPECT_EQ(g[3], 0.0f);
}

TEST(LogSigmoid, RejectsBadInputs) {
  const Tensor x = randn({5}, 1, DType::f32);
  Tensor y64 = Tensor::empty({5}, DType::f64), y6 = Tensor::empty({6}, DType::f32);
  test::expect_error([&] { log_sigmoid_forward(y64, x); }, {"log_sigmoid_forward", "y", "f32"});
  test::expect_error([&] { log_sigmoid_forward(y6, x); }, {"log_sigmoid_forward", "y", "expected [5]"});
  Tensor dx = Tensor::empty({5}, DType::f64);
  test::expect_error([&] { log_sigmoid_backward(dx, Tensor::zeros({5}, DType::f32), x); },
                     {"log_sigmoid_backward", "dx", "dtype"});
}

}  // namespace
