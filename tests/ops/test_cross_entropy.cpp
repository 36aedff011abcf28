// Fused softmax cross-entropy: losses against log-sum-exp by hand, the mean over non-ignored
// rows, dlogits against fp64 finite differences of loss_scale * mean, ignore_index rows,
// in-place dlogits, and validation.
#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "common/gradcheck.h"
#include "ops/cross_entropy.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

namespace {

struct CeCase {
  int64_t n, v;
};
class CrossEntropyShapes : public ::testing::TestWithParam<CeCase> {};

// Every third row ignored (target -100), others (7 r + 1) mod V.
Tensor make_targets(int64_t n, int64_t v, int ignore = -100) {
  std::vector<double> t(n);
  for (int64_t r = 0; r < n; ++r) t[r] = r % 3 == 1 ? ignore : static_cast<double>((7 * r + 1) % v);
  return Tensor::from_vector({n}, t, DType::i32);
}

TEST_P(CrossEntropyShapes, LossesMeanAndGradient) {
  const auto [n, v] = GetParam();
  Tensor logits = randn({n, v}, 1, DType::f64, 0.0, 3.0), targets = make_targets(n, v);
  Tensor losses = Tensor::empty({n}, DType::f64), mean = Tensor::empty({1}, DType::f64);
  Tensor dlogits = Tensor::empty({n, v}, DType::f64);
  CrossEntropyOptions opts;
  opts.loss_scale = 0.75f;
  cross_entropy_forward_backward(losses, mean, dlogits, logits, targets, opts);
  const auto zv = logits.to_vector(), tv = targets.to_vector(), lv = losses.to_vector();
  double total = 0;
  int64_t valid = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (tv[r] == -100) {
      EXPECT_EQ(lv[r], 0.0);
      continue;
    }
    double sum = 0;
    for (int64_t j = 0; j < v; ++j) sum += std::exp(zv[r * v + j]);
    const double expect = std::log(sum) - zv[r * v + static_cast<int64_t>(tv[r])];
    EXPECT_NEAR(lv[r], expect, 1e-12 * std::max(1.0, expect));
    total += expect;
    ++valid;
  }
  EXPECT_NEAR(mean.item(), valid ? total / valid : 0.0, 1e-12);
  auto loss = [&] {
    cross_entropy_forward(losses, mean, logits, targets, opts);
    return opts.loss_scale * mean.item();
  };
  test::expect_grad_close(loss, logits, dlogits, "dlogits");
  // In place: dlogits written over the logits gives the same values.
  Tensor inplace = logits.clone();
  cross_entropy_forward_backward(losses, mean, inplace, inplace, targets, opts);
  EXPECT_EQ(inplace.to_vector(), dlogits.to_vector());
}

INSTANTIATE_TEST_SUITE_P(Ops, CrossEntropyShapes,
                         ::testing::Values(CeCase{1, 1}, CeCase{2, 5}, CeCase{7, 13}, CeCase{9, 130}));

TEST(CrossEntropy, AllIgnoredGivesZeroMeanAndGradient) {
  Tensor logits = randn({3, 4}, 2, DType::f32);
  Tensor targets = Tensor::full({3}, -1, DType::i32);
  Tensor losses = Tensor::empty({3}, DType::f32), mean = Tensor::empty({1}, DType::f32);
  Tensor dl = Tensor::full({3, 4}, 9.0, DType::f32);
  CrossEntropyOptions opts;
  opts.ignore_index = -1;
  cross_entropy_forward_backward(losses, mean, dl, logits, targets, opts);
  EXPECT_EQ(mean.item(), 0.0);
  for (double g : dl.to_vector()) EXPECT_EQ(g, 0.0);
  for (double l : losses.to_vector()) EXPECT_EQ(l, 0.0);
}

TEST(CrossEntropy, LargeLogitsStayFinite) {
  Tensor logits = Tensor::from_vector({1, 3}, std::vector<double>{1000.0, 0.0, -1000.0}, DType::f32);
  Tensor targets = Tensor::from_vector({1}, std::vector<double>{1}, DType::i32);
  Tensor losses = Tensor::empty({1}, DType::f32), mean = Tensor::empty({1}, DType::f32);
  Tensor dl = Tensor::empty({1, 3}, DType::f32);
  cross_entropy_forward_backward(losses, mean, dl, logits, targets);
  EXPECT_NEAR(losses.item(), 1000.0, 1e-3);
  EXPECT_NEAR(dl.to_vector()[0], 1.0, 1e-6);
  EXPECT_NEAR(dl.to_vector()[1], -1.0, 1e-6);
}

TEST(CrossEntropy, RejectsBadInputs) {
  Tensor logits = randn({3, 4}, 2, DType::f32), losses = Tensor::empty({3}, DType::f32);
  Tensor mean = Tensor::empty({1}, DType::f32);
  Tensor t_out = Tensor::from_vector({3}, std::vector<double>{0, 4, 1}, DType::i32);
  test::expect_error([&] { cross_entropy_forward(losses, mean, logits, t_out); },
                     {"cross_entropy", "target 4", "[0, 4)"});
  Tensor t64 = Tensor::zeros({3}, DType::i64);
  test::expect_error([&] { cross_entropy_forward(losses, mean, logits, t64); },
                     {"cross_entropy_forward", "targets", "i32"});
  Tensor t2 = Tensor::zeros({2}, DType::i32);
  test::expect_error([&] { cross_entropy_forward(losses, mean, logits, t2); },
                     {"cross_entropy_forward", "targets", "expected [3]"});
  Tensor t = Tensor::zeros({3}, DType::i32), dl = Tensor::empty({3, 5}, DType::f32);
  test::expect_error([&] { cross_entropy_forward_backward(losses, mean, dl, logits, t); },
                     {"cross_entropy_forward_backward", "dlogits", "expected [3,4]"});
}

}  // namespace
