// ssm::segment_decay on CUDA against the f64 CPU reference: dt in bf16 by the 2x-bf16-baseline
// rule (common/bf16_baseline.h; A and dt_bias rounded like dt), f32 to 1e-5; A [K] and [K, M],
// strided segments of B > 1 rows.
#include <gtest/gtest.h>

#include "common/bf16_baseline.h"
#include "core/cuda_check.h"
#include "core/rng.h"
#include "ssm/segment_decay.h"

using namespace lctx;
using ssm::Softplus;

namespace {

const Device kGpu = Device::cuda(0);

Tensor randn(const Shape& shape, uint64_t seed, double mean = 0.0, double std = 1.0) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0, mean, std);
  return t;
}

struct Case {
  int64_t B, L, begin, end, K, M;
  Softplus sp;
};

class SegmentDecayGpu : public ::testing::TestWithParam<Case> {};

TEST_P(SegmentDecayGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  const Case c = GetParam();
  const Tensor whole = randn({c.B, c.L, c.K}, 1, -2.0, 1.0), bias = randn({c.K}, 2, 0.0, 0.5);
  const Tensor A = c.M == 1 ? randn({c.K}, 3, -0.05, 0.01) : randn({c.K, c.M}, 3, -0.05, 0.01);
  const auto decay = [&](const Tensor& w, const Tensor& b, const Tensor& a, DType dt, Device dev) {
    const DType wide = wide_dtype(dt);
    return ssm::segment_decay(w.to(dt).to(dev).slice(1, c.begin, c.end), b.to(wide).to(dev), a.to(wide).to(dev), c.sp);
  };
  const Tensor exact = decay(whole, bias, A, DType::f64, Device::cpu());
  const Tensor wr = test::round_bf16(whole), br = test::round_bf16(bias), ar = test::round_bf16(A);
  const Tensor ref = decay(wr, br, ar, DType::f64, Device::cpu());
  test::expect_within_bf16_baseline("segment_decay bf16 " + whole.str(), decay(wr, br, ar, DType::bf16, kGpu), ref,
                                    exact);
  LCTX_EXPECT_CLOSE(decay(whole, bias, A, DType::f32, kGpu), decay(whole, bias, A, DType::f32, Device::cpu()), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Ssm, SegmentDecayGpu,
                         ::testing::Values(Case{1, 64, 0, 64, 8, 1, Softplus::on},
                                           Case{2, 300, 17, 250, 48, 1, Softplus::on},
                                           Case{3, 100, 5, 99, 33, 16, Softplus::on},
                                           Case{2, 50, 0, 31, 16, 1, Softplus::off}));

}  // namespace
