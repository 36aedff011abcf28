// CUDA selective scan (bf16, f16) against the CPU f64 implementation, forward (y, final_state)
// and backward (every gradient, with d_final_state), by the 2x-baseline rule: the GPU error
// against the f64 result on the same rounded inputs is at most twice the error that rounding the
// inputs (and parameters) to the 16-bit type once causes in the f64 result. Cases sweep the options, groups,
// d_state 1..256 (every slice split of the kernels), sequences not a multiple of the kernel's
// chunk, B = 2, state0 and its gradient; one segment (S <= 64) and several (the summary
// passes and segment scans, with 2 and with more state slices per warp). f32 against f64 by a
// fixed tolerance; two halves
// chained through final_state / d_state0 on the GPU equal one call; bad input errors.
#include <gtest/gtest.h>

#include <cstdio>

#include "common/bf16_baseline.h"
#include "common/check.h"
#include "common/expect_error.h"
#include "ssm_reference.h"

using namespace lctx;
using namespace lctx::test;
using ssm::ScanGrads;
using ssm::ScanInputs;
using ssm::Softplus;

namespace {

// Each input with its gradient; token inputs are in the I/O dtype, the rest in f32 on the GPU.
struct Field {
  Tensor ScanInputs::*in;
  Tensor ScanGrads::*grad;
  const char* name;
  bool token;
};
constexpr Field kFields[] = {{&ScanInputs::x, &ScanGrads::dx, "x", true},
                             {&ScanInputs::dt, &ScanGrads::d_dt, "dt", true},
                             {&ScanInputs::A, &ScanGrads::dA, "A", false},
                             {&ScanInputs::B, &ScanGrads::dB, "B", true},
                             {&ScanInputs::C, &ScanGrads::dC, "C", true},
                             {&ScanInputs::D, &ScanGrads::dD, "D", false},
                             {&ScanInputs::z, &ScanGrads::dz, "z", true},
                             {&ScanInputs::dt_bias, &ScanGrads::d_dt_bias, "dt_bias", false},
                             {&ScanInputs::state0, &ScanGrads::d_state0, "state0", false}};

// The inputs with token inputs in `io` and the rest in `wide`, on `dev`.
ScanInputs convert(const ScanInputs& in, DType io, DType wide, Device dev) {
  ScanInputs out = in;
  for (const auto& f : kFields) {
    const Tensor& t = in.*f.in;
    if (t.defined()) out.*f.in = t.to(f.token ? io : wide).to(dev);
  }
  return out;
}

// Every input rounded to `io` once, back in f64 (the parameters too, as the conformance suite
// does: the GPU then gets exactly these values, the wide ones in f32).
ScanInputs rounded(const ScanInputs& in, DType io) {
  ScanInputs out = in;
  for (const auto& f : kFields)
    if ((in.*f.in).defined()) out.*f.in = (in.*f.in).to(io).to(DType::f64);
  return out;
}

struct GpuCase {
  ScanCase c;
  DType dt;
};

std::vector<GpuCase> gpu_cases() {
  const std::vector<ScanCase> base = {
      {.name = "all_options", .B = 2, .S = 77, .D = 40, .N = 16},
      {.name = "groups", .B = 2, .S = 50, .D = 48, .N = 8, .G = 4},
      {.name = "group_per_channel", .B = 1, .S = 33, .D = 6, .N = 4, .G = 6},
      // 16 groups under one block of 16 channels: B/C rows too wide to stage, read from global memory.
      {.name = "group_per_channel_wide", .B = 1, .S = 40, .D = 16, .N = 32, .G = 16},
      {.name = "no_options", .B = 2, .S = 41, .D = 33, .N = 16,
       .opt = {.skip = false, .gate = false, .bias = false, .state0 = false}},
      {.name = "softplus_off", .B = 1, .S = 45, .D = 32, .N = 16, .opt = {.softplus = Softplus::off}},
      {.name = "odd_state", .B = 2, .S = 19, .D = 20, .N = 5},
      {.name = "state1", .B = 1, .S = 17, .D = 8, .N = 1},
      {.name = "state64", .B = 1, .S = 200, .D = 36, .N = 64, .G = 2},
      {.name = "state128", .B = 2, .S = 150, .D = 8, .N = 128},
      {.name = "state256", .B = 1, .S = 21, .D = 8, .N = 256},
      {.name = "len1", .B = 2, .S = 1, .D = 32, .N = 16},
      {.name = "len1000", .B = 1, .S = 1000, .D = 64, .N = 16},
  };
  std::vector<GpuCase> v;
  for (DType dt : {DType::bf16, DType::f16})
    for (ScanCase c : base) {
      c.name += "_" + std::string(dtype_name(dt));
      v.push_back({c, dt});
    }
  return v;
}

struct Loss {
  Tensor w, wf;  // dy, d_final_state (f64)
};

class SelectiveScanGpu : public testing::TestWithParam<GpuCase> {};

TEST_P(SelectiveScanGpu, Within2xBaseline) {
  LCTX_REQUIRE_GPU();
  const auto& [c, io] = GetParam();
  const ScanInputs in = make_scan_inputs(c, 5);
  const Loss loss{normal({c.B, c.S, c.D}, 6), normal({c.B, c.D, c.N}, 7)};
  const Tensor w_r = loss.w.to(io).to(DType::f64);
  // Exact: f64 on the inputs as drawn; ref: f64 on the rounded inputs the GPU sees.
  const ScanInputs in_r = rounded(in, io);
  const auto exact = ssm::selective_scan_forward(in, c.opts());
  const auto ref = ssm::selective_scan_forward(in_r, c.opts());
  const auto g_exact = ssm::selective_scan_backward(in, loss.w, loss.wf, c.opts());
  const auto g_ref = ssm::selective_scan_backward(in_r, w_r, loss.wf, c.opts());

  const Device gpu = Device::cuda();
  const ScanInputs in_g = convert(in_r, io, DType::f32, gpu);
  const auto out = ssm::selective_scan_forward(in_g, c.opts());
  EXPECT_EQ(out.y.dtype(), io);
  EXPECT_EQ(out.final_state.dtype(), DType::f32);
  expect_within_bf16_baseline(c.name + " y", out.y, ref.y, exact.y);
  expect_within_bf16_baseline(c.name + " final_state", out.final_state, ref.final_state, exact.final_state);
  const auto g = ssm::selective_scan_backward(in_g, w_r.to(io).to(gpu), loss.wf.to(DType::f32).to(gpu), c.opts());
  for (const auto& f : kFields) {
    const Tensor& gg = g.*f.grad;
    EXPECT_EQ(gg.defined(), (g_ref.*f.grad).defined()) << f.name;
    if (!gg.defined()) continue;
    EXPECT_EQ(gg.dtype(), f.token ? io : DType::f32) << f.name;
    expect_within_bf16_baseline(c.name + " d" + f.name, gg, g_ref.*f.grad, g_exact.*f.grad);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, SelectiveScanGpu, testing::ValuesIn(gpu_cases()),
                         [](const auto& info) { return info.param.c.name; });

// f32 I/O: the GPU scan against f64 by a fixed tolerance (fp32 math, the SFU's exp2).
TEST(SelectiveScanGpuF32, NearF64) {
  LCTX_REQUIRE_GPU();
  const ScanCase c{.name = "f32", .B = 2, .S = 300, .D = 40, .N = 16, .G = 2};
  const ScanInputs in = make_scan_inputs(c, 8);
  const Tensor w = normal({c.B, c.S, c.D}, 9), wf = normal({c.B, c.D, c.N}, 10);
  const auto ref = ssm::selective_scan_forward(in, c.opts());
  const auto g_ref = ssm::selective_scan_backward(in, w, wf, c.opts());
  const Device gpu = Device::cuda();
  const ScanInputs in_g = convert(in, DType::f32, DType::f32, gpu);
  const auto out = ssm::selective_scan_forward(in_g, c.opts());
  const auto g = ssm::selective_scan_backward(in_g, w.to(DType::f32).to(gpu), wf.to(DType::f32).to(gpu), c.opts());
  EXPECT_LE(rel_error(out.y, ref.y), 2e-5);
  EXPECT_LE(rel_error(out.final_state, ref.final_state), 2e-5);
  for (const auto& f : kFields) EXPECT_LE(rel_error(g.*f.grad, g_ref.*f.grad), 2e-5) << f.name;
}

// Two halves on the GPU (f32; the split is not at a chunk boundary), chained through
// final_state and d_state0, equal one call.
TEST(SelectiveScanGpuChaining, HalvesEqualWhole) {
  LCTX_REQUIRE_GPU();
  const ScanCase c{.name = "chain", .B = 2, .S = 101, .D = 40, .N = 16, .G = 2};
  const Device gpu = Device::cuda();
  const ScanInputs in = convert(make_scan_inputs(c, 12), DType::f32, DType::f32, gpu);
  const Tensor w = normal({c.B, c.S, c.D}, 13).to(DType::f32).to(gpu);
  const Tensor wf = normal({c.B, c.D, c.N}, 14).to(DType::f32).to(gpu);
  const int64_t h = 37;
  auto half = [&](int64_t t0, int64_t t1, const Tensor& state0) {
    ScanInputs p = in;
    for (const auto& f : kFields)
      if (f.token) p.*f.in = rows(in.*f.in, t0, t1);
    p.state0 = state0;
    return p;
  };
  const auto whole = ssm::selective_scan_forward(in, c.opts());
  const ScanInputs in1 = half(0, h, in.state0);
  const auto out1 = ssm::selective_scan_forward(in1, c.opts());
  const ScanInputs in2 = half(h, c.S, out1.final_state);
  const auto out2 = ssm::selective_scan_forward(in2, c.opts());
  EXPECT_LE(rel_error(out1.y, rows(whole.y, 0, h)), 1e-6);
  EXPECT_LE(rel_error(out2.y, rows(whole.y, h, c.S)), 1e-6);
  EXPECT_LE(rel_error(out2.final_state, whole.final_state), 1e-6);
  const auto g = ssm::selective_scan_backward(in, w, wf, c.opts());
  const auto g2 = ssm::selective_scan_backward(in2, rows(w, h, c.S), wf, c.opts());
  const auto g1 = ssm::selective_scan_backward(in1, rows(w, 0, h), g2.d_state0, c.opts());
  for (const auto& f : kFields) {
    const Tensor &a = g1.*f.grad, &b = g2.*f.grad, &whole_g = g.*f.grad;
    if (f.token) {
      EXPECT_LE(rel_error(a, rows(whole_g, 0, h)), 1e-5) << f.name;
      EXPECT_LE(rel_error(b, rows(whole_g, h, c.S)), 1e-5) << f.name;
    } else if (f.in == &ScanInputs::state0) {
      EXPECT_LE(rel_error(a, whole_g), 1e-5) << f.name;
    } else {
      EXPECT_LE(rel_error(plus(a, b), whole_g), 1e-5) << f.name;
    }
  }
}

TEST(SelectiveScanGpuErrors, BadInput) {
  LCTX_REQUIRE_GPU();
  const ScanCase c{.name = "bad", .B = 1, .S = 8, .D = 4, .N = 3};
  const Device gpu = Device::cuda();
  const ScanInputs cpu = make_scan_inputs(c, 15);
  const ScanInputs good = convert(cpu, DType::bf16, DType::f32, gpu);
  auto fwd = [&](ScanInputs in) { return [in] { ssm::selective_scan_forward(in, {}); }; };
  expect_error(fwd(convert(cpu, DType::f64, DType::f64, gpu)), {"selective_scan_forward", "CUDA supports bf16, f16 and f32"});
  ScanInputs in = good;
  in.A = Tensor::zeros({c.D, 257}, DType::f32, gpu);
  in.B = Tensor::zeros({c.B, c.S, 1, 257}, DType::bf16, gpu);
  in.C = in.B;
  in.state0 = Tensor();
  expect_error(fwd(in), {"CUDA supports d_state 1..256", "[4,257]"});
  in = good;
  in.A = cpu.A.to(DType::f32);  // on the CPU
  expect_error(fwd(in), {"selective_scan_forward"});
  in = good;
  in.A = cpu.A.to(DType::bf16).to(gpu);
  expect_error(fwd(in), {"A", "must have dtype f32"});
  expect_error([&] { ssm::selective_scan_backward(good, Tensor::zeros({c.B, c.S, 5}, DType::bf16, gpu), Tensor(), {}); },
               {"selective_scan_backward", "dy has shape [1,8,5]"});
}

}  // namespace
