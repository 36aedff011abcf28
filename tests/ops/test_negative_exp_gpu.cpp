// ops::negative_exp on CUDA against the f64 CPU reference: bf16/f16 inputs by the 2x-bf16-
// baseline rule (common/bf16_baseline.h), f32 to 1e-6; the backward into 16-bit and f32 dx.
#include <gtest/gtest.h>

#include "common/bf16_baseline.h"
#include "core/cuda_check.h"
#include "ops/negative_exp.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

namespace {

const Device kGpu = Device::cuda(0);

struct Outputs {
  Tensor y, dx, dx_wide;
};

Outputs run(const Tensor& x64, const Tensor& dy64, DType dt, Device dev) {
  const DType wide = wide_dtype(dt);
  const Tensor x = x64.to(dt).to(dev), dy = dy64.to(wide).to(dev);
  Outputs r{Tensor::empty(x.shape(), wide, dev), Tensor::empty(x.shape(), dt, dev), Tensor::empty(x.shape(), wide, dev)};
  negative_exp_forward(r.y, x);
  negative_exp_backward(r.dx, dy, r.y);
  negative_exp_backward(r.dx_wide, dy, r.y);
  return r;
}

class NegativeExpGpu : public ::testing::TestWithParam<Shape> {};

TEST_P(NegativeExpGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  const Shape s = GetParam();
  const Tensor x = randn(s, 13, DType::f64, 1.0, 1.0), dy = randn(s, 14);
  const Outputs exact = run(x, dy, DType::f64, Device::cpu());
  const Tensor xr = test::round_bf16(x), dyr = test::round_bf16(dy);  // exact in bf16 and f16
  const Outputs ref = run(xr, dyr, DType::f64, Device::cpu());
  for (DType dt : {DType::bf16, DType::f16}) {
    const Outputs gpu = run(xr, dyr, dt, kGpu);
    const std::string name = std::string(dtype_name(dt)) + " " + Tensor::empty(s, dt).str();
    test::expect_within_bf16_baseline(name + " y", gpu.y, ref.y, exact.y);
    test::expect_within_bf16_baseline(name + " dx", gpu.dx, ref.dx, exact.dx);
    test::expect_within_bf16_baseline(name + " dx (f32)", gpu.dx_wide, ref.dx, exact.dx);
  }
  const Outputs gpu32 = run(x, dy, DType::f32, kGpu), cpu32 = run(x, dy, DType::f32, Device::cpu());
  LCTX_EXPECT_CLOSE(gpu32.y, cpu32.y, 1e-6);
  LCTX_EXPECT_CLOSE(gpu32.dx, cpu32.dx, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Ops, NegativeExpGpu, ::testing::Values(Shape{1}, Shape{4, 16}, Shape{1000, 37}));

}  // namespace
