// Linformer on CUDA (ops::matmul projections around attn::flash) against the f64 CPU reference:
// o and the gradients of q, k, v, E and F in bf16 by the 2x-bf16-baseline rule
// (common/bf16_baseline.h); GQA, B > 1, S shorter than E's n and not a multiple of the tiles,
// k projected rows not a multiple of the tiles, head dims 64 and 128.
#include <gtest/gtest.h>

#include <cmath>

#include "common/bf16_baseline.h"
#include "core/cuda_check.h"
#include "core/rng.h"
#include "linear_attn/linformer.h"

using namespace lctx;
using namespace lctx::test;
using linear_attn::LinformerInputs;

namespace {

const Device kGpu = Device::cuda(0);

struct GpuLinformerCase {
  std::string name;
  int64_t B, S, n, kp;
  int Hq, Hkv, D;
};
inline void PrintTo(const GpuLinformerCase& c, std::ostream* os) { *os << c.name; }

LinformerInputs make_inputs(const GpuLinformerCase& c) {
  LinformerInputs in{Tensor::empty({c.B, c.S, c.Hq, c.D}, DType::f64),
                     Tensor::empty({c.B, c.S, c.Hkv, c.D}, DType::f64),
                     Tensor::empty({c.B, c.S, c.Hkv, c.D}, DType::f64), Tensor::empty({c.kp, c.n}, DType::f64),
                     Tensor::empty({c.kp, c.n}, DType::f64)};
  uint64_t seed = 41;
  for (Tensor* t : {&in.q, &in.k, &in.v}) rng_normal(*t, seed++, 0);
  for (Tensor* t : {&in.e, &in.f}) rng_normal(*t, seed++, 0, 0.0, 1.0 / std::sqrt(static_cast<double>(c.S)));
  return in;
}

LinformerInputs convert(const LinformerInputs& in, DType dt, Device dev) {
  auto cv = [&](const Tensor& t) { return t.to(dt).to(dev); };
  return {cv(in.q), cv(in.k), cv(in.v), cv(in.e), cv(in.f)};
}

struct Result {
  Tensor o;
  linear_attn::LinformerGrads g;
};

Result run(const LinformerInputs& in64, const Tensor& dout64, DType dt, Device dev) {
  const LinformerInputs in = convert(in64, dt, dev);
  const Tensor dout = dout64.to(dt).to(dev);
  return {linear_attn::linformer_forward(in, {}), linear_attn::linformer_backward(in, dout, {})};
}

class LinformerGpu : public ::testing::TestWithParam<GpuLinformerCase> {};

TEST_P(LinformerGpu, Bf16WithinTwiceBaseline) {
  LCTX_REQUIRE_GPU();
  const GpuLinformerCase c = GetParam();
  const LinformerInputs in = make_inputs(c);
  Tensor dout = Tensor::empty(in.q.shape(), DType::f64);
  rng_normal(dout, 49, 0);
  const Result exact = run(in, dout, DType::f64, Device::cpu());
  const LinformerInputs inr{round_bf16(in.q), round_bf16(in.k), round_bf16(in.v), round_bf16(in.e), round_bf16(in.f)};
  const Tensor doutr = round_bf16(dout);
  const Result ref = run(inr, doutr, DType::f64, Device::cpu());
  const Result gpu = run(inr, doutr, DType::bf16, kGpu);
  EXPECT_EQ(gpu.g.de.dtype(), DType::f32);
  for (const auto& [name, got, want, ex] :
       {std::tuple{"o", gpu.o, ref.o, exact.o}, std::tuple{"dq", gpu.g.dq, ref.g.dq, exact.g.dq},
        std::tuple{"dk", gpu.g.dk, ref.g.dk, exact.g.dk}, std::tuple{"dv", gpu.g.dv, ref.g.dv, exact.g.dv},
        std::tuple{"de", gpu.g.de, ref.g.de, exact.g.de}, std::tuple{"df", gpu.g.df, ref.g.df, exact.g.df}})
    expect_within_bf16_baseline(c.name + " " + name, got, want, ex);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinformerGpu,
                         ::testing::Values(GpuLinformerCase{"b2_gqa_d64", 2, 200, 256, 64, 4, 2, 64},
                                           GpuLinformerCase{"b1_k37_d64", 1, 333, 333, 37, 2, 2, 64},
                                           GpuLinformerCase{"b3_k16_d128", 3, 77, 128, 16, 2, 1, 128}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
