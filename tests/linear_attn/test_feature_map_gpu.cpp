// Feature maps on CUDA (feature_map.cu) against the f64 CPU reference: phi, dx and FAVOR+'s key
// stabiliser, bf16 by the 2x-bf16-baseline rule (common/bf16_baseline.h), f32 to 1e-5 against
// the CPU in f32; every map, FAVOR+ with the per-row (query) and the given (key) stabiliser,
// m not a multiple of 32, B > 1, x a strided view (rows of a wider tensor).
#include <gtest/gtest.h>

#include "common/bf16_baseline.h"
#include "core/cuda_check.h"
#include "core/rng.h"
#include "linear_attn/feature_map.h"

using namespace lctx;
using namespace lctx::test;
using linear_attn::FeatureKind;
using linear_attn::FeatureMap;

namespace {

const Device kGpu = Device::cuda(0);

Tensor randn(const Shape& shape, uint64_t seed, double std = 1.0) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0, 0.0, std);
  return t;
}

struct GpuMapCase {
  std::string name;
  FeatureKind kind;
  int64_t B, S, H, D, m = 0;
  bool key = false;      // favor: the key stabiliser (given) instead of the per-row max
  bool strided = false;  // x is the first D columns of [B, S, H, D + 8]
};
inline void PrintTo(const GpuMapCase& c, std::ostream* os) { *os << c.name; }

struct Result {
  Tensor phi, dx, stab;
};

// The map of x (f64 CPU values) in `dt` on `dev`, dphi likewise.
Result run(const GpuMapCase& c, const Tensor& x64, const Tensor& dphi64, DType dt, Device dev) {
  FeatureMap fm{.kind = c.kind, .projection = {}};
  if (c.kind == FeatureKind::favor) fm.projection = linear_attn::favor_projection(c.D, 7, c.m, wide_dtype(dt)).to(dev);
  Tensor x = x64.to(dt).to(dev);
  if (c.strided) x = x.slice(3, 0, c.D);
  Result r;
  if (c.key) r.stab = linear_attn::favor_key_stabiliser(x, fm);
  const Tensor dphi = dphi64.to(dt).to(dev);
  r.phi = linear_attn::feature_map_forward(x, fm, r.stab);
  r.dx = linear_attn::feature_map_backward(x, dphi, fm, r.stab);
  return r;
}

class FeatureMapGpu : public ::testing::TestWithParam<GpuMapCase> {};

TEST_P(FeatureMapGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  const GpuMapCase c = GetParam();
  const int64_t cols = c.strided ? c.D + 8 : c.D, fd = c.kind == FeatureKind::favor ? c.m : c.D;
  // Elementwise maps on inputs of std 3 (where phi's rounding, not x's, would dominate near 0).
  const Tensor x = randn({c.B, c.S, c.H, cols}, 31, c.kind == FeatureKind::favor ? 1.0 : 3.0);
  const Tensor dphi = randn({c.B, c.S, c.H, fd}, 32);
  const Result exact = run(c, x, dphi, DType::f64, Device::cpu());
  const Tensor xr = round_bf16(x), dphir = round_bf16(dphi);
  const Result ref = run(c, xr, dphir, DType::f64, Device::cpu());
  const Result gpu = run(c, xr, dphir, DType::bf16, kGpu);
  expect_within_bf16_baseline(c.name + " phi", gpu.phi, ref.phi, exact.phi);
  expect_within_bf16_baseline(c.name + " dx", gpu.dx, ref.dx, exact.dx);
  if (c.key) expect_within_bf16_baseline(c.name + " key stabiliser", gpu.stab, ref.stab, exact.stab);

  const Result g32 = run(c, x, dphi, DType::f32, kGpu), c32 = run(c, x, dphi, DType::f32, Device::cpu());
  LCTX_EXPECT_CLOSE(g32.phi, c32.phi, 1e-5);
  LCTX_EXPECT_CLOSE(g32.dx, c32.dx, 1e-5);
  if (c.key) LCTX_EXPECT_CLOSE(g32.stab, c32.stab, 1e-6);
}

std::vector<GpuMapCase> gpu_cases() {
  return {
      {"identity", FeatureKind::identity, 2, 37, 3, 64},
      {"elu_plus_one", FeatureKind::elu_plus_one, 2, 37, 3, 64},
      {"elu_plus_one_strided", FeatureKind::elu_plus_one, 3, 21, 2, 32, 0, false, true},
      {"relu", FeatureKind::relu, 1, 50, 4, 128},
      {"favor_query", FeatureKind::favor, 2, 37, 3, 64, 256},
      {"favor_key", FeatureKind::favor, 2, 37, 3, 64, 256, true},
      {"favor_query_m40_strided", FeatureKind::favor, 3, 29, 2, 32, 40, false, true},
      {"favor_key_m40_strided", FeatureKind::favor, 3, 29, 2, 32, 40, true, true},
      {"favor_key_long", FeatureKind::favor, 1, 1000, 2, 128, 128, true},
  };
}

INSTANTIATE_TEST_SUITE_P(Maps, FeatureMapGpu, ::testing::ValuesIn(gpu_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
