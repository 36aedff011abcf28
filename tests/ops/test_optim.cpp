// AdamW against a step computed by hand, the bf16/f32 parameter copy, and global grad-norm
// clipping (value, scaling, no scaling below the threshold, NaN/inf reported untouched).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/check.h"
#include "ops/adamw.h"
#include "ops/grad_clip.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

namespace {

TEST(AdamW, MatchesHandComputedSteps) {
  // One parameter p = 1, g = 0.5, then g = -0.25: lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.01.
  Tensor master = Tensor::full({1}, 1.0, DType::f64), m = Tensor::zeros({1}, DType::f64);
  Tensor v = Tensor::zeros({1}, DType::f64), param = Tensor::empty({1}, DType::f32);
  AdamWConfig cfg{0.1f, 0.9f, 0.999f, 1e-8f, 0.01f};
  const double lr = cfg.lr, b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps, wd = cfg.weight_decay;
  adamw_update(param, master, m, v, Tensor::full({1}, 0.5, DType::f64), cfg, 1);
  // Step 1: m = (1 - b1) 0.5 (~0.05), v = (1 - b2) 0.25 (~0.00025), mhat = 0.5, vhat = 0.25.
  // (The config holds floats: b1, b2, lr... are the float-rounded values.)
  const double m1 = (1 - b1) * 0.5, v1 = (1 - b2) * 0.25;
  double p = 1.0 * (1 - lr * wd) - lr * 0.5 / (0.5 + eps);
  EXPECT_NEAR(m.item(), m1, 1e-15);
  EXPECT_NEAR(v.item(), v1, 1e-15);
  EXPECT_NEAR(master.item(), p, 1e-12);
  EXPECT_EQ(param.item(), static_cast<double>(static_cast<float>(master.item())));
  // Step 2 with grad_scale 0.5 on g = -0.5 (so g = -0.25).
  adamw_update(param, master, m, v, Tensor::full({1}, -0.5, DType::f64), cfg, 2, 0.5f);
  const double m2 = b1 * m1 + (1 - b1) * -0.25, v2 = b2 * v1 + (1 - b2) * 0.0625;
  const double mhat = m2 / (1 - b1 * b1), vhat = v2 / (1 - b2 * b2);
  p = p * (1 - lr * wd) - lr * mhat / (std::sqrt(vhat) + eps);
  EXPECT_NEAR(m.item(), m2, 1e-12);
  EXPECT_NEAR(v.item(), v2, 1e-12);
  EXPECT_NEAR(master.item(), p, 1e-12);
}

TEST(AdamW, WithoutParamCopyAndValidation) {
  Tensor master = randn({17}, 1, DType::f32), m = Tensor::zeros({17}, DType::f32), v = Tensor::zeros({17}, DType::f32);
  Tensor g = randn({17}, 2, DType::f32), none;
  const auto before = master.to_vector();
  adamw_update(none, master, m, v, g, {}, 1);
  const auto after = master.to_vector(), gv = g.to_vector();
  for (size_t i = 0; i < before.size(); ++i) {  // first step moves each weight by ~lr against the gradient sign
    EXPECT_NEAR(after[i] - before[i] * (1 - 1e-3 * 0.01), -1e-3 * (gv[i] > 0 ? 1 : -1), 1e-6);
  }
  test::expect_error([&] { adamw_update(none, master, m, v, g, {}, 0); }, {"adamw_update", "step must be >= 1"});
  Tensor m_bad = Tensor::zeros({16}, DType::f32);
  test::expect_error([&] { adamw_update(none, master, m_bad, v, g, {}, 1); }, {"adamw_update", "m", "expected [17]"});
  Tensor v64 = Tensor::zeros({17}, DType::f64);
  test::expect_error([&] { adamw_update(none, master, m, v64, g, {}, 1); }, {"adamw_update", "v", "f32"});
}

TEST(GradClip, NormScalingAndThreshold) {
  std::vector<Tensor> grads = {randn({3, 5}, 1, DType::f32), randn({7}, 2, DType::f64).to(DType::f32),
                               randn({1}, 3, DType::f32)};
  double ss = 0;
  std::vector<std::vector<double>> before;
  for (const Tensor& g : grads) {
    before.push_back(g.to_vector());
    for (double x : before.back()) ss += x * x;
  }
  const double norm = std::sqrt(ss);
  GradNorm r = grad_norm(grads);
  EXPECT_NEAR(r.norm, norm, 1e-6 * norm);
  EXPECT_TRUE(r.finite);
  r = clip_grad_norm(grads, 2 * norm);  // below the threshold: untouched
  EXPECT_FALSE(r.clipped);
  for (size_t i = 0; i < grads.size(); ++i) EXPECT_EQ(grads[i].to_vector(), before[i]);
  r = clip_grad_norm(grads, norm / 4);
  EXPECT_TRUE(r.clipped);
  EXPECT_NEAR(r.scale, 0.25, 1e-6);
  EXPECT_NEAR(grad_norm(grads).norm, norm / 4, 1e-5 * norm);
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto now = grads[i].to_vector();
    for (size_t j = 0; j < now.size(); ++j) EXPECT_NEAR(now[j], before[i][j] * r.scale, 1e-6);
  }
}

TEST(GradClip, NonFiniteNormIsReportedAndNothingIsScaled) {
  for (double bad : {NAN, INFINITY}) {
    std::vector<Tensor> grads = {randn({4}, 1, DType::f32), randn({3}, 2, DType::f32)};
    grads[1].slice(0, 1, 2).fill(bad);
    const auto keep = grads[0].to_vector();
    const GradNorm r = clip_grad_norm(grads, 1e-3);
    EXPECT_FALSE(r.finite);
    EXPECT_FALSE(r.clipped);
    EXPECT_FALSE(std::isfinite(r.norm));
    EXPECT_EQ(grads[0].to_vector(), keep);
  }
  std::vector<Tensor> none;
  EXPECT_EQ(grad_norm(none).norm, 0.0);
  std::vector<Tensor> ints = {Tensor::zeros({2}, DType::i32)};
  test::expect_error([&] { grad_norm(ints); }, {"grad_norm", "grads[0]", "f32 or f64"});
  std::vector<Tensor> g1 = {randn({2}, 1, DType::f32)};
  test::expect_error([&] { clip_grad_norm(g1, 0.0); }, {"clip_grad_norm", "max_norm must be positive"});
}

}  // namespace
