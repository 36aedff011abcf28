// Mamba-2 SSD on linear_attn (f64 and f32) against the naive f64 SSD loop (independent of
// linear_attn) for groups, chunk lengths and every optional input; f64 finite-difference
// gradients of every input (x, dt, A, B, C, D, dt_bias, state0); two halves chained through
// the state equal the whole sequence, forward and backward; f32 error against f64; bad input.
#include <gtest/gtest.h>

#include "common/expect_error.h"
#include "recurrence_checks.h"

using namespace lctx;
using namespace lctx::test;
using ssm::Softplus;
using ssm::SsdGrads;
using ssm::SsdInputs;

namespace {

struct SsdOp {
  using Case = SsdCase;
  using Inputs = SsdInputs;
  using Grads = SsdGrads;
  static constexpr Field<Inputs, Grads> fields[] = {{&Inputs::x, &Grads::dx, "x", Role::token},
                                                    {&Inputs::dt, &Grads::d_dt, "dt", Role::token},
                                                    {&Inputs::A, &Grads::dA, "A", Role::param},
                                                    {&Inputs::B, &Grads::dB, "B", Role::token},
                                                    {&Inputs::C, &Grads::dC, "C", Role::token},
                                                    {&Inputs::D, &Grads::dD, "D", Role::param},
                                                    {&Inputs::dt_bias, &Grads::d_dt_bias, "dt_bias", Role::param},
                                                    {&Inputs::state0, &Grads::d_state0, "state0", Role::state}};
  static Inputs inputs(const Case& c, uint64_t seed) { return make_ssd_inputs(c, seed); }
  static ssm::SsdOutput naive(const Case& c, const Inputs& in) { return naive_ssd(c, in); }
  static ssm::SsdOutput forward(const Inputs& in, const Case& c) { return ssm::ssd_forward(in, c.opts()); }
  static Grads backward(const Inputs& in, const Tensor& dy, const Tensor& d_final, const Case& c) {
    return ssm::ssd_backward(in, dy, d_final, c.opts());
  }
  static Shape y_shape(const Case& c) { return {c.B, c.S, c.H, c.P}; }
  static Shape state_shape(const Case& c) { return {c.B, c.H, c.N, c.P}; }
};

std::vector<SsdCase> cases() {
  return {
      {.name = "groups"},
      {.name = "one_group", .B = 1, .S = 10, .H = 3, .P = 2, .G = 1, .N = 4, .opt = {.chunk = 3}},
      {.name = "group_per_head", .B = 1, .S = 9, .H = 2, .P = 2, .G = 2, .N = 2, .opt = {.chunk = 5}},
      {.name = "no_options", .opt = {.skip = false, .bias = false, .state0 = false}},
      {.name = "softplus_off", .opt = {.softplus = Softplus::off}},
      {.name = "chunk1", .S = 7, .opt = {.chunk = 1}},
      {.name = "chunk_gt_S", .S = 7, .opt = {.chunk = 64}},
      {.name = "len1", .S = 1},
  };
}

std::string case_name(const testing::TestParamInfo<SsdCase>& i) { return i.param.name; }

class Ssd : public testing::TestWithParam<SsdCase> {};

TEST_P(Ssd, MatchesNaive) { check_matches_naive<SsdOp>(GetParam()); }
TEST_P(Ssd, GradCheck) { check_grads<SsdOp>(GetParam()); }
TEST_P(Ssd, ChainsInHalves) { check_chaining<SsdOp>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Cases, Ssd, testing::ValuesIn(cases()), case_name);

TEST(SsdPrecision, F32NearF64) {
  check_f32_near_f64<SsdOp>(
      {.name = "ssd_S1024_H4_P16_N16", .B = 1, .S = 1024, .H = 4, .P = 16, .G = 1, .N = 16, .opt = {.chunk = 64}},
      1e-5);
}

TEST(SsdErrors, BadInput) {
  const SsdCase c{.name = "bad"};
  const SsdInputs good = make_ssd_inputs(c, 41);
  auto fwd = [&](SsdInputs in) { return [in] { ssm::ssd_forward(in, {}); }; };
  SsdInputs in = good;
  in.state0 = Tensor::zeros({c.B, c.H, c.N + 1, c.P}, DType::f64);
  expect_error(fwd(in), {"ssd_forward", "state0 has shape [2,4,4,3]", "expected [2,4,3,3]"});
  in = good;
  in.B = Tensor::zeros({c.B, c.S, 3, c.N}, DType::f64);
  expect_error(fwd(in), {"groups of B", "[2,13,3,3]", "must divide the heads H = 4"});
  in = good;
  in.C = Tensor::zeros({c.B, c.S, 1, c.N}, DType::f64);
  expect_error(fwd(in), {"C has shape [2,13,1,3]", "expected [2,13,2,3]"});
  in = good;
  in.A = Tensor::zeros({c.B, c.S, c.H}, DType::f64);
  expect_error(fwd(in), {"A has shape [2,13,4]", "expected [4]"});
  expect_error(
      [&] {
        ssm::ssd_backward(good, Tensor::zeros({c.B, c.S, c.H, 1}, DType::f64), Tensor(), {});
      },
      {"ssd_backward", "dy has shape [2,13,4,1]"});
}

}  // namespace
