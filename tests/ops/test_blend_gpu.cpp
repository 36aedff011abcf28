// ops::blend on CUDA against the f64 CPU implementation: bf16/f16 by the 2x-bf16-baseline rule
// (common/bf16_baseline.h), f32 to 1e-6; with the gate's logits and with a constant ratio.
#include <gtest/gtest.h>

#include "common/bf16_baseline.h"
#include "common/check.h"
#include "core/cuda_check.h"
#include "ops/blend.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

namespace {

struct Blended {
  Tensor o, da, db, dz;
};

Blended run(const Tensor& a64, const Tensor& b64, const Tensor& z64, const Tensor& do64, DType dt, Device dev) {
  auto on = [&](const Tensor& t) { return t.defined() ? t.to(dt).to(dev) : Tensor(); };
  const Tensor a = on(a64), b = on(b64), z = on(z64), d_o = on(do64);
  const BlendWeight w{.logits = z, .ratio = 0.3};
  Blended r{Tensor::empty(a.shape(), dt, dev), {}, {}, {}};
  blend_forward(r.o, a, b, w);
  BlendGrads g{Tensor::empty(a.shape(), dt, dev), Tensor::empty(a.shape(), dt, dev),
               z.defined() ? Tensor::empty(z.shape(), dt, dev) : Tensor()};
  blend_backward(g, d_o, a, b, w);
  r.da = g.da, r.db = g.db, r.dz = g.dz;
  return r;
}

class BlendGpu : public ::testing::TestWithParam<bool> {};

TEST_P(BlendGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  const bool gated = GetParam();
  const Shape s{2, 37, 4, 64};
  const Tensor a = randn(s, 1), b = randn(s, 2), d_o = randn(s, 3), z = gated ? randn({2, 37, 4}, 4) : Tensor();
  auto rnd = [](const Tensor& t) { return t.defined() ? test::round_bf16(t) : t; };
  const Blended exact = run(a, b, z, d_o, DType::f64, Device::cpu());
  const Blended ref = run(rnd(a), rnd(b), rnd(z), rnd(d_o), DType::f64, Device::cpu());
  const Device gpu = Device::cuda(0);
  for (DType dt : {DType::bf16, DType::f16}) {
    const Blended got = run(rnd(a), rnd(b), rnd(z), rnd(d_o), dt, gpu);
    const std::string name = std::string(dtype_name(dt)) + (gated ? " gate" : " ratio");
    test::expect_within_bf16_baseline(name + " o", got.o, ref.o, exact.o);
    test::expect_within_bf16_baseline(name + " da", got.da, ref.da, exact.da);
    test::expect_within_bf16_baseline(name + " db", got.db, ref.db, exact.db);
    if (gated) test::expect_within_bf16_baseline(name + " dz", got.dz, ref.dz, exact.dz);
  }
  const Blended got32 = run(a, b, z, d_o, DType::f32, gpu), cpu32 = run(a, b, z, d_o, DType::f32, Device::cpu());
  LCTX_EXPECT_CLOSE(got32.o, cpu32.o, 1e-6);
  LCTX_EXPECT_CLOSE(got32.da, cpu32.da, 1e-6);
  LCTX_EXPECT_CLOSE(got32.db, cpu32.db, 1e-6);
  if (gated) LCTX_EXPECT_CLOSE(got32.dz, cpu32.dz, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Ops, BlendGpu, ::testing::Values(true, false));

}  // namespace
