// ops::negative_exp on the CPU: values -e^x, the f64 finite-difference gradient through the
// forward's output, bad inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "common/gradcheck.h"
#include "ops/negative_exp.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

class NegativeExpShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(NegativeExpShapes, ValuesAndGradient) {
  const Shape s = GetParam();
  Tensor x = randn(s, 5, DType::f64, 0.5, 1.0), y = Tensor::empty(s, DType::f64), r = randn(s, 6);
  negative_exp_forward(y, x);
  const auto xv = x.to_vector(), yv = y.to_vector();
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_DOUBLE_EQ(yv[i], -std::exp(xv[i]));
  auto loss = [&] {
    Tensor out = Tensor::empty(s, DType::f64);
    negative_exp_forward(out, x);
    return dot(out, r);
  };
  Tensor dx = Tensor::empty(s, DType::f64);
  negative_exp_backward(dx, r, y);
  test::expect_grad_close(loss, x, dx, "dx");
}

INSTANTIATE_TEST_SUITE_P(Ops, NegativeExpShapes, ::testing::Values(Shape{1}, Shape{4, 16}, Shape{2, 3, 7}));

TEST(NegativeExp, RejectsBadInputs) {
  const Tensor x = randn({5}, 1, DType::f32);
  Tensor y64 = Tensor::empty({5}, DType::f64), y = Tensor::empty({5}, DType::f32);
  test::expect_error([&] { negative_exp_forward(y64, x); }, {"negative_exp_forward", "y", "f32"});
  negative_exp_forward(y, x);
  Tensor dx = Tensor::empty({5}, DType::f64), dy4 = Tensor::zeros({4}, DType::f32);
  test::expect_error([&] { negative_exp_backward(dx, Tensor::zeros({5}, DType::f32), y); },
                     {"negative_exp_backward", "dx"});
  Tensor dx32 = Tensor::empty({5}, DType::f32);
  test::expect_error([&] { negative_exp_backward(dx32, dy4, y); }, {"negative_exp_backward", "dy"});
}

}  // namespace
