// CPU causal depthwise conv1d (f64 and f32) against the naive f64 loop for widths 1..8, with
// and without bias, history and the fused SiLU; f64 finite-difference gradients of x, weight,
// bias and history; two halves chained through the history (the last W-1 rows of the first
// half) equal the whole sequence, forward and backward; f32 error against f64; bad input.
#include <gtest/gtest.h>

#include <cstdio>

#include "common/check.h"
#include "common/gradcheck.h"
#include "common/expect_error.h"
#include "ssm_reference.h"

using namespace lctx;
using namespace lctx::test;
using ssm::Activation;
using ssm::ConvGrads;
using ssm::ConvInputs;

namespace {

ConvInputs to_dtype(const ConvInputs& in, DType dt) {
  return {as(in.x, dt), as(in.weight, wide_dtype(dt)), as(in.bias, wide_dtype(dt)), as(in.history, dt)};
}

std::vector<ConvCase> cases() {
  return {
      {.name = "w4_silu"},
      {.name = "w4_plain_no_bias", .bias = false, .act = Activation::none},
      {.name = "w4_no_history", .history = false},
      {.name = "w1", .W = 1},
      {.name = "w2", .B = 1, .S = 6, .W = 2},
      {.name = "w8", .B = 1, .S = 16, .C = 2, .W = 8},
      {.name = "len1", .S = 1, .W = 3},
  };
}

std::string case_name(const testing::TestParamInfo<ConvCase>& i) { return i.param.name; }

class CausalConv1d : public testing::TestWithParam<ConvCase> {};

TEST_P(CausalConv1d, MatchesNaive) {
  const ConvCase& c = GetParam();
  const ConvInputs in = make_conv_inputs(c, 3);
  const Tensor ref = naive_conv(c, in);
  for (DType dt : {DType::f64, DType::f32}) {
    const Tensor y = ssm::causal_conv1d_forward(to_dtype(in, dt), c.opts());
    EXPECT_EQ(y.dtype(), dt);
    EXPECT_LE(rel_error(y, ref), dt == DType::f64 ? 1e-14 : 1e-6) << dtype_name(dt);
  }
}

TEST_P(CausalConv1d, GradCheck) {
  const ConvCase& c = GetParam();
  ConvInputs in = make_conv_inputs(c, 11);
  if (!in.history.defined()) in.history = Tensor::zeros({c.B, c.W - 1, c.C}, DType::f64);  // d_history of zeros
  const Tensor w = normal({c.B, c.S, c.C}, 13);
  auto f = [&] { return weighted_sum({{ssm::causal_conv1d_forward(in, c.opts()), w}}); };
  ConvInputs call = in;
  if (!c.history) call.history = Tensor();
  const ConvGrads g = ssm::causal_conv1d_backward(call, w, c.opts());
  expect_grad_close(f, in.x, g.dx, "x");
  expect_grad_close(f, in.weight, g.dweight, "weight");
  expect_grad_close(f, in.history, g.d_history, "history");
  EXPECT_EQ(g.dbias.defined(), c.bias);
  if (c.bias) expect_grad_close(f, in.bias, g.dbias, "bias");
}

// The second half's history is the last W-1 rows of the first; its gradient flows back into
// the first half's dx.
TEST_P(CausalConv1d, ChainsInHalves) {
  const ConvCase& c = GetParam();
  const int64_t h = c.S / 2 + 1;
  if (h < c.W - 1 || h >= c.S) GTEST_SKIP() << "needs two halves, the first at least W-1 rows";
  const ConvInputs in = make_conv_inputs(c, 17);
  const Tensor w = normal({c.B, c.S, c.C}, 19);
  ConvInputs in1 = in, in2 = in;
  in1.x = rows(in.x, 0, h);
  in2.x = rows(in.x, h, c.S);
  in2.history = rows(in.x, h - (c.W - 1), h);
  const Tensor y = ssm::causal_conv1d_forward(in, c.opts());
  EXPECT_LE(rel_error(ssm::causal_conv1d_forward(in1, c.opts()), rows(y, 0, h)), 1e-15);
  EXPECT_LE(rel_error(ssm::causal_conv1d_forward(in2, c.opts()), rows(y, h, c.S)), 1e-15);

  const ConvGrads g = ssm::causal_conv1d_backward(in, w, c.opts());
  const ConvGrads g1 = ssm::causal_conv1d_backward(in1, rows(w, 0, h), c.opts());
  const ConvGrads g2 = ssm::causal_conv1d_backward(in2, rows(w, h, c.S), c.opts());
  g1.dx.slice(1, h - (c.W - 1), h).add_from(g2.d_history);
  EXPECT_LE(rel_error(g1.dx, rows(g.dx, 0, h)), 1e-14);
  EXPECT_LE(rel_error(g2.dx, rows(g.dx, h, c.S)), 1e-14);
  EXPECT_LE(rel_error(plus(g1.dweight, g2.dweight), g.dweight), 1e-14);
  if (c.bias) {
    EXPECT_LE(rel_error(plus(g1.dbias, g2.dbias), g.dbias), 1e-14);
  }
  EXPECT_LE(rel_error(g1.d_history, g.d_history), 1e-14);
}

INSTANTIATE_TEST_SUITE_P(Cases, CausalConv1d, testing::ValuesIn(cases()), case_name);

TEST(CausalConv1dPrecision, F32NearF64) {
  const ConvCase c{.name = "long", .B = 2, .S = 512, .C = 64, .W = 4};
  const ConvInputs in = make_conv_inputs(c, 23);
  const Tensor w = normal({c.B, c.S, c.C}, 29);
  const Tensor y64 = ssm::causal_conv1d_forward(in, c.opts());
  const Tensor y32 = ssm::causal_conv1d_forward(to_dtype(in, DType::f32), c.opts());
  const ConvGrads g64 = ssm::causal_conv1d_backward(in, w, c.opts());
  const ConvGrads g32 = ssm::causal_conv1d_backward(to_dtype(in, DType::f32), w.to(DType::f32), c.opts());
  const double e[] = {rel_error(y32, y64), rel_error(g32.dx, g64.dx), rel_error(g32.dweight, g64.dweight),
                      rel_error(g32.dbias, g64.dbias), rel_error(g32.d_history, g64.d_history)};
  std::printf(
      "causal conv1d f32 vs f64 (S %lld, C %d, W %d): y %.2e, dx %.2e, dweight %.2e, dbias %.2e, "
      "d_history %.2e\n",
      static_cast<long long>(c.S), c.C, c.W, e[0], e[1], e[2], e[3], e[4]);
  for (double v : e) EXPECT_LE(v, 1e-5);
}

TEST(CausalConv1dErrors, BadInput) {
  const ConvCase c{.name = "bad"};
  const ConvInputs good = make_conv_inputs(c, 31);
  auto fwd = [&](ConvInputs in) { return [in] { ssm::causal_conv1d_forward(in, {}); }; };
  ConvInputs in = good;
  in.weight = Tensor::zeros({c.C, 9}, DType::f64);
  expect_error(fwd(in), {"causal_conv1d_forward", "width W of weight f64[3,9]", "1..8"});
  in = good;
  in.history = Tensor::zeros({c.B, c.W, c.C}, DType::f64);
  expect_error(fwd(in), {"history has shape [2,4,3]", "expected [2,3,3]"});
  in = good;
  in.bias = Tensor::zeros({c.C + 1}, DType::f64);
  expect_error(fwd(in), {"bias has shape [4]", "expected [3]"});
  in = good;
  in.x = good.x.to(DType::f32);
  expect_error(fwd(in), {"weight", "must have dtype f32"});
  expect_error(
      [&] {
        ssm::causal_conv1d_backward(good, Tensor::zeros({c.B, c.S + 1, c.C}, DType::f64), {});
      },
      {"causal_conv1d_backward", "dy has shape [2,12,3]", "expected [2,11,3]"});
}

}  // namespace
