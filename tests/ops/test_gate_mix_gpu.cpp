// ops::gate_mix on CUDA against the f64 CPU implementation: bf16/f16 by the 2x-bf16-baseline
// rule (common/bf16_baseline.h), f32 to 1e-6 (1e-5 for the logits' gradient, a sum over E);
// with NSA's 3 branches, one branch, and 11 (more than one kernel launch's 8).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/bf16_baseline.h"
#include "common/check.h"
#include "core/cuda_check.h"
#include "ops/gate_mix.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

namespace {

struct Mixed {
  Tensor o, dz;
  std::vector<Tensor> db;
};

Mixed run(const std::vector<Tensor>& b64, const Tensor& z64, const Tensor& do64, DType dt, Device dev) {
  auto on = [&](const Tensor& t) { return t.to(dt).to(dev); };
  std::vector<Tensor> b;
  for (const Tensor& t : b64) b.push_back(on(t));
  const Tensor z = on(z64), d_o = on(do64);
  Mixed r{Tensor::empty(d_o.shape(), dt, dev), Tensor::empty(z.shape(), dt, dev), {}};
  gate_mix_forward(r.o, b, z);
  for (size_t t = 0; t < b.size(); ++t) r.db.push_back(Tensor::empty(d_o.shape(), dt, dev));
  gate_mix_backward(r.db, r.dz, d_o, b, z);
  return r;
}

class GateMixGpu : public ::testing::TestWithParam<int> {};

TEST_P(GateMixGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  const int n = GetParam();
  const Shape s{2, 37, 4, 64};
  std::vector<Tensor> b, br;
  for (int t = 0; t < n; ++t) {
    b.push_back(randn(s, 10 + static_cast<uint64_t>(t)));
    br.push_back(test::round_bf16(b.back()));
  }
  const Tensor z = randn({2, 37, 4 * n}, 1), d_o = randn(s, 2);
  const Tensor zr = test::round_bf16(z), dor = test::round_bf16(d_o);
  const Mixed exact = run(b, z, d_o, DType::f64, Device::cpu());
  const Mixed ref = run(br, zr, dor, DType::f64, Device::cpu());
  const Device gpu = Device::cuda(0);
  for (DType dt : {DType::bf16, DType::f16}) {
    const Mixed got = run(br, zr, dor, dt, gpu);
    const std::string name = std::string(dtype_name(dt)) + " n=" + std::to_string(n);
    test::expect_within_bf16_baseline(name + " o", got.o, ref.o, exact.o);
    for (int t = 0; t < n; ++t)
      test::expect_within_bf16_baseline(name + " d_branches[" + std::to_string(t) + "]", got.db[static_cast<size_t>(t)],
                                        ref.db[static_cast<size_t>(t)], exact.db[static_cast<size_t>(t)]);
    test::expect_within_bf16_baseline(name + " d_logits", got.dz, ref.dz, exact.dz);
  }
  const Mixed got32 = run(b, z, d_o, DType::f32, gpu), cpu32 = run(b, z, d_o, DType::f32, Device::cpu());
  LCTX_EXPECT_CLOSE(got32.o, cpu32.o, 1e-6);
  for (size_t t = 0; t < got32.db.size(); ++t) LCTX_EXPECT_CLOSE(got32.db[t], cpu32.db[t], 1e-6);
  LCTX_EXPECT_CLOSE(got32.dz, cpu32.dz, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Ops, GateMixGpu, ::testing::Values(3, 1, 11));

}  // namespace
