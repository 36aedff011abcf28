// ops::log_sigmoid on CUDA against the f64 CPU reference: bf16/f16 inputs by the 2x-bf16-baseline
// rule (common/bf16_baseline.h; y and a wide dx in f32, dx in x's dtype), f32 inputs to 1e-6.
#include <gtest/gtest.h>

#include "common/bf16_baseline.h"
#include "core/cuda_check.h"
#include "ops/log_sigmoid.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

namespace {

const Device kGpu = Device::cuda(0);

struct Outputs {
  Tensor y, dx, dx_wide;
};

// Forward and both backward variants of x and dy on their device; x in `dt`, dy wide.
Outputs run(const Tensor& x64, const Tensor& dy64, DType dt, Device dev) {
  const DType wide = wide_dtype(dt);
  const Tensor x = x64.to(dt).to(dev), dy = dy64.to(wide).to(dev);
  Outputs r{Tensor::empty(x.shape(), wide, dev), Tensor::empty(x.shape(), dt, dev), Tensor::empty(x.shape(), wide, dev)};
  log_sigmoid_forward(r.y, x);
  log_sigmoid_backward(r.dx, dy, x);
  log_sigmoid_backward(r.dx_wide, dy, x);
  return r;
}

class LogSigmoidGpu : public ::testing::TestWithParam<Shape> {};

TEST_P(LogSigmoidGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  const Shape s = GetParam();
  const Tensor x = randn(s, 11, DType::f64, 0.0, 3.0), dy = randn(s, 12);
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

INSTANTIATE_TEST_SUITE_P(Ops, LogSigmoidGpu, ::testing::Values(Shape{1}, Shape{3, 5}, Shape{1000, 37}));

}  // namespace
