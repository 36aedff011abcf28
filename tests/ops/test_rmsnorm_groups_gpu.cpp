// Grouped RMSNorm on CUDA (norm.cu) against the f64 CPU reference: out, rstd, dx, dw in bf16 by
// the 2x-bf16-baseline rule (common/bf16_baseline.h), f32 to 1e-5; group sizes with and without
// 16-byte vector loads, many rows (the two-pass weight gradient over several row chunks).
#include <gtest/gtest.h>

#include "common/bf16_baseline.h"
#include "core/cuda_check.h"
#include "ops/rmsnorm.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

namespace {

const Device kGpu = Device::cuda(0);

struct GroupCase {
  int64_t rows, C, groups;
};

struct Outputs {
  Tensor out, rstd, dx, dw;
};

Outputs run(const Tensor& x64, const Tensor& w64, const Tensor& dy64, int64_t G, DType dt, Device dev) {
  const Tensor x = x64.to(dt).to(dev), w = w64.to(dt).to(dev), dy = dy64.to(dt).to(dev);
  const int64_t rows = x.size(0), C = x.size(1);
  Outputs r{Tensor::empty({rows, C}, dt, dev), Tensor::empty({rows * G}, wide_dtype(dt), dev),
        Tensor::empty({rows, C}, dt, dev), Tensor::empty({C}, wide_dtype(dt), dev)};
  rmsnorm_forward(r.out, r.rstd, x, w, 1e-5f, G);
  rmsnorm_backward(r.dx, r.dw, dy, x, w, r.rstd, GradMode::overwrite, G);
  return r;
}

class RmsNormGroupsGpu : public ::testing::TestWithParam<GroupCase> {};

TEST_P(RmsNormGroupsGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  const GroupCase c = GetParam();
  const Tensor x = randn({c.rows, c.C}, 1), w = randn({c.C}, 2, DType::f64, 1.0, 0.3), dy = randn({c.rows, c.C}, 3);
  const Outputs exact = run(x, w, dy, c.groups, DType::f64, Device::cpu());
  const Tensor xr = test::round_bf16(x), wr = test::round_bf16(w), dyr = test::round_bf16(dy);
  const Outputs ref = run(xr, wr, dyr, c.groups, DType::f64, Device::cpu());
  const Outputs gpu = run(xr, wr, dyr, c.groups, DType::bf16, kGpu);
  const std::string name =
      "rows " + std::to_string(c.rows) + " C " + std::to_string(c.C) + " groups " + std::to_string(c.groups);
  test::expect_within_bf16_baseline(name + " out", gpu.out, ref.out, exact.out);
  test::expect_within_bf16_baseline(name + " rstd", gpu.rstd, ref.rstd, exact.rstd);
  test::expect_within_bf16_baseline(name + " dx", gpu.dx, ref.dx, exact.dx);
  test::expect_within_bf16_baseline(name + " dw", gpu.dw, ref.dw, exact.dw);
  const Outputs g32 = run(x, w, dy, c.groups, DType::f32, kGpu), c32 = run(x, w, dy, c.groups, DType::f32, Device::cpu());
  LCTX_EXPECT_CLOSE(g32.out, c32.out, 1e-5);
  LCTX_EXPECT_CLOSE(g32.dx, c32.dx, 1e-5);
  LCTX_EXPECT_CLOSE(g32.dw, c32.dw, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Ops, RmsNormGroupsGpu,
                         ::testing::Values(GroupCase{7, 64, 2}, GroupCase{300, 256, 4}, GroupCase{1000, 96, 8},
                                           GroupCase{33, 30, 3}, GroupCase{513, 1024, 1}));

}  // namespace
