// ops::blend on the CPU: values against the definition, f64 finite-difference gradients of a,
// b and the gate's logits (and of a, b with a constant ratio), bad inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "common/gradcheck.h"
#include "ops/blend.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

struct BlendCase {
  Shape shape;
  bool gate;
};

class BlendShapes : public ::testing::TestWithParam<BlendCase> {};

TEST_P(BlendShapes, ValuesAndGradients) {
  const auto [s, gated] = GetParam();
  const int64_t E = s.back(), rows = Tensor::empty(s, DType::f64).numel() / E;
  Tensor a = randn(s, 1), b = randn(s, 2), r = randn(s, 3), z = randn({rows}, 4);
  const BlendWeight w{.logits = gated ? z : Tensor(), .ratio = 0.3};
  Tensor o = Tensor::empty(s, DType::f64);
  blend_forward(o, a, b, w);
  const auto av = a.to_vector(), bv = b.to_vector(), ov = o.to_vector(), zv = z.to_vector();
  for (size_t i = 0; i < ov.size(); ++i) {
    const double g = gated ? 1.0 / (1.0 + std::exp(-zv[i / static_cast<size_t>(E)])) : 0.3;
    EXPECT_NEAR(ov[i], (1 - g) * av[i] + g * bv[i], 1e-15);
  }
  auto loss = [&] {
    Tensor out = Tensor::empty(s, DType::f64);
    blend_forward(out, a, b, w);
    return dot(out, r);
  };
  BlendGrads g{Tensor::empty(s, DType::f64), Tensor::empty(s, DType::f64),
               gated ? Tensor::empty({rows}, DType::f64) : Tensor()};
  blend_backward(g, r, a, b, w);
  test::expect_grad_close(loss, a, g.da, "da");
  test::expect_grad_close(loss, b, g.db, "db");
  if (gated) test::expect_grad_close(loss, z, g.dz, "dz");
}

INSTANTIATE_TEST_SUITE_P(Ops, BlendShapes,
                         ::testing::Values(BlendCase{{1}, true}, BlendCase{{4, 16}, true}, BlendCase{{2, 3, 4, 5}, true},
                                           BlendCase{{2, 3, 7}, false}));

TEST(Blend, RejectsBadInputs) {
  const Tensor a = randn({2, 3, 4}, 1, DType::f32), b = randn({2, 3, 4}, 2, DType::f32);
  Tensor o = Tensor::empty({2, 3, 4}, DType::f32), o64 = Tensor::empty({2, 3, 4}, DType::f64);
  test::expect_error([&] { blend_forward(o64, a, b, {}); }, {"blend_forward", "o", "f32"});
  test::expect_error([&] { blend_forward(o, a, randn({2, 3, 5}, 2, DType::f32), {}); }, {"blend_forward", "b"});
  test::expect_error([&] { blend_forward(o, a, b, {.logits = randn({5}, 3, DType::f32)}); },
                     {"blend_forward", "logits", "one per row"});
  test::expect_error([&] { blend_forward(o, a, b, {.ratio = 1.5}); }, {"blend_forward", "ratio", "[0, 1]"});
  BlendGrads g{Tensor::empty({2, 3, 4}, DType::f32), Tensor::empty({2, 3, 4}, DType::f32),
               Tensor::empty({6}, DType::f32)};
  test::expect_error([&] { blend_backward(g, o, a, b, {}); }, {"blend_backward", "dz", "logits"});
}

}  // namespace
