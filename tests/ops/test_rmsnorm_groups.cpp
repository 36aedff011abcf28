// Grouped RMSNorm (ops/rmsnorm.h with groups) on the CPU: values and rstd against the formula
// per group, f64 finite-difference gradients of x and w, GradMode::accumulate, groups = 1 equal
// to the plain op, bad inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "common/gradcheck.h"
#include "ops/rmsnorm.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

struct GroupCase {
  Shape x;
  int64_t groups;
};

class RmsNormGroups : public ::testing::TestWithParam<GroupCase> {};

TEST_P(RmsNormGroups, ValuesAndGradients) {
  const auto [xs, G] = GetParam();
  const int64_t C = xs.back(), cg = C / G, n = Tensor::empty(xs, DType::f64).numel() / C;
  const float eps = 1e-5f;
  Tensor x = randn(xs, 1, DType::f64, 0.3), w = randn({C}, 2, DType::f64, 1.0, 0.5), r = randn(xs, 3);
  Tensor out = Tensor::empty(xs, DType::f64), rstd = Tensor::empty({n * G}, DType::f64);
  rmsnorm_forward(out, rstd, x, w, eps, G);
  const auto xv = x.to_vector(), wv = w.to_vector(), ov = out.to_vector(), rv = rstd.to_vector();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < G; ++g) {
      double ss = 0;
      for (int64_t j = g * cg; j < (g + 1) * cg; ++j) ss += xv[i * C + j] * xv[i * C + j];
      const double rs = 1.0 / std::sqrt(ss / static_cast<double>(cg) + static_cast<double>(eps));
      EXPECT_NEAR(rv[i * G + g], rs, 1e-12 * rs);
      for (int64_t j = g * cg; j < (g + 1) * cg; ++j) EXPECT_NEAR(ov[i * C + j], xv[i * C + j] * rs * wv[j], 1e-12);
    }
  auto loss = [&] {
    rmsnorm_forward(out, rstd, x, w, eps, G);
    return dot(out, r);
  };
  Tensor dx = Tensor::empty(xs, DType::f64), dw = Tensor::empty({C}, DType::f64);
  rmsnorm_forward(out, rstd, x, w, eps, G);
  rmsnorm_backward(dx, dw, r, x, w, rstd, GradMode::overwrite, G);
  test::expect_grad_close(loss, x, dx, "dx");
  test::expect_grad_close(loss, w, dw, "dw");
  Tensor dw2 = dw.clone();  // accumulate: dw + dw
  rmsnorm_backward(dx, dw2, r, x, w, rstd, GradMode::accumulate, G);
  std::vector<double> twice = dw.to_vector();
  for (double& e : twice) e *= 2;
  LCTX_EXPECT_CLOSE(dw2, Tensor::from_vector(dw.shape(), twice, DType::f64), 1e-15);
}

INSTANTIATE_TEST_SUITE_P(Ops, RmsNormGroups,
                         ::testing::Values(GroupCase{{3, 8}, 2}, GroupCase{{2, 3, 12}, 3}, GroupCase{{5, 6}, 6},
                                           GroupCase{{4, 10}, 1}));

TEST(RmsNormGroups, OneGroupIsPlainRmsNorm) {
  const Tensor x = randn({7, 16}, 4, DType::f64), w = randn({16}, 5, DType::f64, 1.0, 0.5), r = randn({7, 16}, 6);
  Tensor a = Tensor::empty({7, 16}, DType::f64), b = a.clone(), ra = Tensor::empty({7}, DType::f64), rb = ra.clone();
  rmsnorm_forward(a, ra, x, w, 1e-5f);
  rmsnorm_forward(b, rb, x, w, 1e-5f, 1);
  LCTX_EXPECT_CLOSE(a, b, 0.0);
}

TEST(RmsNormGroups, RejectsBadInputs) {
  const Tensor x = randn({4, 12}, 1, DType::f32), w = randn({12}, 2, DType::f32);
  Tensor out = Tensor::empty({4, 12}, DType::f32), rstd = Tensor::empty({4 * 5}, DType::f32);
  test::expect_error([&] { rmsnorm_forward(out, rstd, x, w, 1e-5f, 5); }, {"rmsnorm_forward", "groups (5)", "divide"});
  Tensor rstd4 = Tensor::empty({4}, DType::f32);
  test::expect_error([&] { rmsnorm_forward(out, rstd4, x, w, 1e-5f, 3); },
                     {"rmsnorm_forward", "rstd", "expected [12]"});
}

}  // namespace
