// ssm::segment_decay on the CPU against its formula written out here: A [K] and [K, M], with and
// without dt_bias and softplus, a strided slice of a longer sequence, bad inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "common/expect_error.h"
#include "core/rng.h"
#include "ssm/segment_decay.h"

using namespace lctx;
using ssm::Softplus;

namespace {

Tensor randn(const Shape& shape, uint64_t seed, double mean = 0.0, double std = 1.0) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0, mean, std);
  return t;
}

// a[b, k * M + m] = exp(A[k, m] sum_t f(dt[b, t, k] + bias[k])) in f64.
std::vector<double> naive(const Tensor& dt, const Tensor& bias, const Tensor& A, Softplus sp) {
  const int64_t B = dt.size(0), T = dt.size(1), K = dt.size(2), M = A.numel() / K;
  const auto d = dt.contiguous().to_vector(), a = A.to_vector();
  const std::vector<double> bv = bias.defined() ? bias.to_vector() : std::vector<double>(K, 0.0);
  std::vector<double> out;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k) {
      double sum = 0;
      for (int64_t t = 0; t < T; ++t) {
        const double v = d[(b * T + t) * K + k] + bv[k];
        sum += sp == Softplus::on ? std::log1p(std::exp(v)) : v;
      }
      for (int64_t m = 0; m < M; ++m) out.push_back(std::exp(a[k * M + m] * sum));
    }
  return out;
}

TEST(SegmentDecay, MatchesFormula) {
  const Tensor whole = randn({2, 40, 6}, 1, -1.0, 1.0), bias = randn({6}, 2, 0.0, 0.5);
  const Tensor dt = whole.slice(1, 7, 30);  // a strided segment
  for (const Shape& a_shape : {Shape{6}, Shape{6, 5}})
    for (Softplus sp : {Softplus::on, Softplus::off})
      for (bool with_bias : {true, false}) {
        const Tensor A = randn(a_shape, 3, -0.3, 0.1), b = with_bias ? bias : Tensor();
        const Tensor a = ssm::segment_decay(dt, b, A, sp);
        ASSERT_EQ(a.shape(), (Shape{2, A.numel()}));
        const Tensor want = Tensor::from_vector(a.shape(), naive(dt, b, A, sp), DType::f64);
        EXPECT_LE(test::rel_error(a, want), 1e-14)
            << A.str() << " softplus " << (sp == Softplus::on) << " bias " << with_bias;
      }
  // f32 dt with f32 (wide) A.
  const Tensor a32 =
      ssm::segment_decay(dt.to(DType::f32), bias.to(DType::f32), randn({6}, 4, -0.3, 0.1).to(DType::f32), Softplus::on);
  EXPECT_EQ(a32.dtype(), DType::f32);
}

TEST(SegmentDecay, RejectsBadInputs) {
  const Tensor dt = randn({2, 5, 3}, 1), A = randn({3}, 2);
  test::expect_error([&] { ssm::segment_decay(dt, Tensor(), randn({4}, 2), Softplus::on); },
                     {"segment_decay", "A", "K = 3"});
  test::expect_error([&] { ssm::segment_decay(dt, randn({2}, 3), A, Softplus::on); }, {"segment_decay", "dt_bias"});
  test::expect_error([&] { ssm::segment_decay(dt, Tensor(), A.to(DType::f32), Softplus::on); },
                     {"segment_decay", "A", "f64"});
  test::expect_error(
      [&] {
        ssm::segment_decay(randn({2, 5}, 1), Tensor(), A, Softplus::on);
      },
      {"segment_decay", "dt", "[B, T, K]"});
}

}  // namespace
