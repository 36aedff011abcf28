// CPU selective scan (f64 and f32) against the naive f64 loop for groups, chunk lengths and
// every optional input; f64 finite-difference gradients of every input (x, dt, A, B, C, D, z,
// dt_bias, state0); two halves chained through state0 / final_state equal the whole sequence,
// forward and backward; f32 error against f64 on a longer sequence; bad input.
#include <gtest/gtest.h>

#include "common/expect_error.h"
#include "recurrence_checks.h"

using namespace lctx;
using namespace lctx::test;
using ssm::ScanGrads;
using ssm::ScanInputs;
using ssm::Softplus;

namespace {

struct ScanOp {
  using Case = ScanCase;
  using Inputs = ScanInputs;
  using Grads = ScanGrads;
  static constexpr Field<Inputs, Grads> fields[] = {{&Inputs::x, &Grads::dx, "x", Role::token},
                                                    {&Inputs::dt, &Grads::d_dt, "dt", Role::token},
                                                    {&Inputs::A, &Grads::dA, "A", Role::param},
                                                    {&Inputs::B, &Grads::dB, "B", Role::token},
                                                    {&Inputs::C, &Grads::dC, "C", Role::token},
                                                    {&Inputs::D, &Grads::dD, "D", Role::param},
                                                    {&Inputs::z, &Grads::dz, "z", Role::token},
                                                    {&Inputs::dt_bias, &Grads::d_dt_bias, "dt_bias", Role::param},
                                                    {&Inputs::state0, &Grads::d_state0, "state0", Role::state}};
  static Inputs inputs(const Case& c, uint64_t seed) { return make_scan_inputs(c, seed); }
  static ssm::ScanOutput naive(const Case& c, const Inputs& in) { return naive_scan(c, in); }
  static ssm::ScanOutput forward(const Inputs& in, const Case& c) { return ssm::selective_scan_forward(in, c.opts()); }
  static Grads backward(const Inputs& in, const Tensor& dy, const Tensor& d_final, const Case& c) {
    return ssm::selective_scan_backward(in, dy, d_final, c.opts());
  }
  static Shape y_shape(const Case& c) { return {c.B, c.S, c.D}; }
  static Shape state_shape(const Case& c) { return {c.B, c.D, c.N}; }
};

std::vector<ScanCase> cases() {
  return {
      {.name = "all_options"},
      {.name = "groups", .B = 1, .S = 10, .D = 6, .N = 2, .G = 3},
      {.name = "group_per_channel", .B = 1, .S = 9, .D = 3, .N = 2, .G = 3, .opt = {.chunk = 5}},
      {.name = "no_options", .opt = {.skip = false, .gate = false, .bias = false, .state0 = false}},
      {.name = "softplus_off", .opt = {.softplus = Softplus::off, .chunk = 3}},
      {.name = "chunk1", .S = 7, .opt = {.chunk = 1}},
      {.name = "chunk_gt_S", .S = 7, .opt = {.chunk = 64}},
      {.name = "len1", .S = 1},
  };
}

std::string case_name(const testing::TestParamInfo<ScanCase>& i) { return i.param.name; }

class SelectiveScan : public testing::TestWithParam<ScanCase> {};

TEST_P(SelectiveScan, MatchesNaive) { check_matches_naive<ScanOp>(GetParam()); }
TEST_P(SelectiveScan, GradCheck) { check_grads<ScanOp>(GetParam()); }
TEST_P(SelectiveScan, ChainsInHalves) { check_chaining<ScanOp>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Cases, SelectiveScan, testing::ValuesIn(cases()), case_name);

// A Mamba-sized state (d_state 16) over 1024 tokens: the fp32 scan's error stays small.
TEST(SelectiveScanPrecision, F32NearF64) {
  check_f32_near_f64<ScanOp>(
      {.name = "selective_scan_S1024_D8_N16", .B = 1, .S = 1024, .D = 8, .N = 16, .opt = {.chunk = 128}}, 1e-5);
}

TEST(SelectiveScanErrors, BadInput) {
  const ScanCase c{.name = "bad"};
  const ScanInputs good = make_scan_inputs(c, 41);
  auto fwd = [&](ScanInputs in) { return [in] { ssm::selective_scan_forward(in, {}); }; };
  ScanInputs in = good;
  in.state0 = Tensor::zeros({c.B, c.N, c.D}, DType::f64);
  expect_error(fwd(in), {"selective_scan_forward", "state0", "[2,3,4]", "expected [2,4,3]"});
  in = good;
  in.B = Tensor::zeros({c.B, c.S, 3, c.N}, DType::f64);
  expect_error(fwd(in), {"groups of B", "[2,13,3,3]", "must divide d_inner D = 4"});
  in = good;
  in.C = Tensor::zeros({c.B, c.S, 2, c.N}, DType::f64);
  expect_error(fwd(in), {"C has shape [2,13,2,3]", "expected [2,13,1,3]"});
  in = good;
  in.A = good.A.to(DType::f32);
  expect_error(fwd(in), {"A", "f32[4,3]", "must have dtype f64"});
  in = good;
  in.z = Tensor();
  in.x = rows(good.x, 0, 5);
  expect_error(fwd(in), {"dt has shape [2,13,4]", "expected [2,5,4]"});
  in.x = good.x.slice(1, 0, 5);
  expect_error(fwd(in), {"x f64[2,5,4]@cpu must be contiguous"});
  expect_error([&] { ssm::selective_scan_forward(good, {.chunk = 0}); }, {"chunk 0 must be >= 1"});
  expect_error(
      [&] {
        ssm::selective_scan_backward(good, Tensor::zeros({c.B, c.S, 5}, DType::f64), Tensor(), {});
      },
      {"selective_scan_backward", "dy has shape [2,13,5]"});
}

}  // namespace
