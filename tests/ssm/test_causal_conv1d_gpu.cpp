// CUDA causal depthwise conv1d (bf16, f16) against the CPU f64 implementation, forward and
// backward (dx, dweight, dbias, d_history), by the 2x-baseline rule: the GPU error against the
// f64 result on the same rounded inputs is at most twice the error that rounding x, weight,
// bias, the history and dy to the 16-bit type once causes. Widths 1..8, with and without bias, history
// and SiLU, odd lengths, B = 2. f32 against f64 by a fixed tolerance; two halves chained
// through the history on the GPU equal one call; bad input errors.
#include <gtest/gtest.h>

#include <cstdio>

#include "common/bf16_baseline.h"
#include "common/check.h"
#include "common/expect_error.h"
#include "ssm_reference.h"

using namespace lctx;
using namespace lctx::test;
using ssm::Activation;
using ssm::ConvGrads;
using ssm::ConvInputs;

namespace {

// Activations (x, history) in `io`, weight and bias in `wide`, on `dev`.
ConvInputs convert(const ConvInputs& in, DType io, DType wide, Device dev) {
  auto cv = [&](const Tensor& t, DType d) { return t.defined() ? t.to(d).to(dev) : Tensor(); };
  return {cv(in.x, io), cv(in.weight, wide), cv(in.bias, wide), cv(in.history, io)};
}

struct GpuCase {
  ConvCase c;
  DType dt;
};

std::vector<GpuCase> gpu_cases() {
  const std::vector<ConvCase> base = {
      {.name = "w4_silu", .B = 2, .S = 301, .C = 40},
      {.name = "w4_plain_no_bias", .B = 2, .S = 77, .C = 33, .bias = false, .act = Activation::none},
      {.name = "w4_no_history", .B = 1, .S = 129, .C = 64, .history = false},
      {.name = "w1", .B = 2, .S = 50, .C = 8, .W = 1},
      {.name = "w2", .B = 1, .S = 31, .C = 5, .W = 2},
      {.name = "w3", .B = 2, .S = 19, .C = 96, .W = 3},
      {.name = "w8", .B = 1, .S = 200, .C = 48, .W = 8},
      {.name = "len1", .B = 2, .S = 1, .C = 16, .W = 4},
      {.name = "len2_w8", .B = 1, .S = 2, .C = 7, .W = 8},
      {.name = "long", .B = 1, .S = 5000, .C = 256, .W = 4},
  };
  std::vector<GpuCase> v;
  for (DType dt : {DType::bf16, DType::f16})
    for (ConvCase c : base) {
      c.name += "_" + std::string(dtype_name(dt));
      v.push_back({c, dt});
    }
  return v;
}

class CausalConv1dGpu : public testing::TestWithParam<GpuCase> {};

TEST_P(CausalConv1dGpu, Within2xBaseline) {
  LCTX_REQUIRE_GPU();
  const auto& [c, io] = GetParam();
  const ConvInputs in = make_conv_inputs(c, 3);
  const Tensor dy = normal({c.B, c.S, c.C}, 4);
  auto round = [&](const Tensor& t) { return t.defined() ? t.to(io).to(DType::f64) : Tensor(); };
  const ConvInputs in_r{round(in.x), round(in.weight), round(in.bias), round(in.history)};
  const Tensor dy_r = round(dy);
  const Tensor exact = ssm::causal_conv1d_forward(in, c.opts()), ref = ssm::causal_conv1d_forward(in_r, c.opts());
  const ConvGrads g_exact = ssm::causal_conv1d_backward(in, dy, c.opts());
  const ConvGrads g_ref = ssm::causal_conv1d_backward(in_r, dy_r, c.opts());

  const Device gpu = Device::cuda();
  const ConvInputs in_g = convert(in_r, io, DType::f32, gpu);
  const Tensor y = ssm::causal_conv1d_forward(in_g, c.opts());
  EXPECT_EQ(y.dtype(), io);
  expect_within_bf16_baseline(c.name + " y", y, ref, exact);
  const ConvGrads g = ssm::causal_conv1d_backward(in_g, dy.to(io).to(gpu), c.opts());
  expect_within_bf16_baseline(c.name + " dx", g.dx, g_ref.dx, g_exact.dx);
  expect_within_bf16_baseline(c.name + " dweight", g.dweight, g_ref.dweight, g_exact.dweight);
  EXPECT_EQ(g.dbias.defined(), c.bias);
  if (c.bias) expect_within_bf16_baseline(c.name + " dbias", g.dbias, g_ref.dbias, g_exact.dbias);
  if (c.W > 1) expect_within_bf16_baseline(c.name + " d_history", g.d_history, g_ref.d_history, g_exact.d_history);
  EXPECT_EQ(g.d_history.dtype(), io);
}

INSTANTIATE_TEST_SUITE_P(Cases, CausalConv1dGpu, testing::ValuesIn(gpu_cases()),
                         [](const auto& info) { return info.param.c.name; });

TEST(CausalConv1dGpuF32, NearF64) {
  LCTX_REQUIRE_GPU();
  const ConvCase c{.name = "f32", .B = 2, .S = 123, .C = 40, .W = 4};
  const ConvInputs in = make_conv_inputs(c, 5);
  const Tensor dy = normal({c.B, c.S, c.C}, 6);
  const Tensor ref = ssm::causal_conv1d_forward(in, c.opts());
  const ConvGrads g_ref = ssm::causal_conv1d_backward(in, dy, c.opts());
  const Device gpu = Device::cuda();
  const ConvInputs in_g = convert(in, DType::f32, DType::f32, gpu);
  EXPECT_LE(rel_error(ssm::causal_conv1d_forward(in_g, c.opts()), ref), 1e-6);
  const ConvGrads g = ssm::causal_conv1d_backward(in_g, dy.to(DType::f32).to(gpu), c.opts());
  EXPECT_LE(rel_error(g.dx, g_ref.dx), 1e-6);
  EXPECT_LE(rel_error(g.dweight, g_ref.dweight), 1e-6);
  EXPECT_LE(rel_error(g.dbias, g_ref.dbias), 1e-6);
  EXPECT_LE(rel_error(g.d_history, g_ref.d_history), 1e-6);
}

// Two halves on the GPU (f32), the second's history = the last W-1 rows of the first, equal
// one call; the second half's d_history adds to the first half's last rows.
TEST(CausalConv1dGpuChaining, HalvesEqualWhole) {
  LCTX_REQUIRE_GPU();
  const ConvCase c{.name = "chain", .B = 2, .S = 60, .C = 24, .W = 4};
  const Device gpu = Device::cuda();
  const ConvInputs in = convert(make_conv_inputs(c, 7), DType::f32, DType::f32, gpu);
  const Tensor dy = normal({c.B, c.S, c.C}, 8).to(DType::f32).to(gpu);
  const int64_t h = 29;
  const ConvInputs in1{rows(in.x, 0, h), in.weight, in.bias, in.history};
  const ConvInputs in2{rows(in.x, h, c.S), in.weight, in.bias, rows(in.x, h - (c.W - 1), h)};
  const Tensor whole = ssm::causal_conv1d_forward(in, c.opts());
  EXPECT_LE(rel_error(ssm::causal_conv1d_forward(in1, c.opts()), rows(whole, 0, h)), 1e-6);
  EXPECT_LE(rel_error(ssm::causal_conv1d_forward(in2, c.opts()), rows(whole, h, c.S)), 1e-6);
  const ConvGrads g = ssm::causal_conv1d_backward(in, dy, c.opts());
  const ConvGrads g1 = ssm::causal_conv1d_backward(in1, rows(dy, 0, h), c.opts());
  const ConvGrads g2 = ssm::causal_conv1d_backward(in2, rows(dy, h, c.S), c.opts());
  const int64_t cut = h - (c.W - 1);  // the first half's rows that are the second's history
  EXPECT_LE(rel_error(rows(g1.dx, 0, cut), rows(g.dx, 0, cut)), 1e-6);
  EXPECT_LE(rel_error(plus(rows(g1.dx, cut, h), g2.d_history), rows(g.dx, cut, h)), 1e-6);
  EXPECT_LE(rel_error(g2.dx, rows(g.dx, h, c.S)), 1e-6);
  EXPECT_LE(rel_error(g1.d_history, g.d_history), 1e-6);
  EXPECT_LE(rel_error(plus(g1.dweight, g2.dweight), g.dweight), 1e-6);
  EXPECT_LE(rel_error(plus(g1.dbias, g2.dbias), g.dbias), 1e-6);
}

TEST(CausalConv1dGpuErrors, BadInput) {
  LCTX_REQUIRE_GPU();
  const ConvCase c{.name = "bad", .B = 1, .S = 8, .C = 4, .W = 4};
  const Device gpu = Device::cuda();
  const ConvInputs cpu = make_conv_inputs(c, 9);
  const ConvInputs good = convert(cpu, DType::bf16, DType::f32, gpu);
  auto fwd = [&](ConvInputs in) { return [in] { ssm::causal_conv1d_forward(in, {}); }; };
  expect_error(fwd(convert(cpu, DType::f64, DType::f64, gpu)), {"causal_conv1d_forward", "CUDA supports bf16, f16 and f32"});
  ConvInputs in = good;
  in.weight = Tensor::zeros({c.C, 9}, DType::f32, gpu);
  expect_error(fwd(in), {"width W of weight", "1..8"});
  in = good;
  in.weight = cpu.weight.to(DType::f32);  // on the CPU
  expect_error(fwd(in), {"causal_conv1d_forward"});
  in = good;
  in.history = Tensor::zeros({c.B, 2, c.C}, DType::bf16, gpu);
  expect_error(fwd(in), {"history", "[1,2,4]", "expected [1,3,4]"});
  expect_error([&] { ssm::causal_conv1d_backward(good, Tensor::zeros({c.B, c.S, 5}, DType::bf16, gpu), {}); },
               {"causal_conv1d_backward", "dy has shape [1,8,5]"});
}

}  // namespace
