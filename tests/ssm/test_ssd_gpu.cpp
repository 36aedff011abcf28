// SSD on CUDA. Its own pieces (ssd.cu: linear_attn's inputs, the D skip, the gradient map with
// its per-head sums) against their formulas in f64, bf16 by the 2x-bf16-baseline rule
// (common/bf16_baseline.h), f32 to 1e-5; and the whole op (which also needs linear_attn's CUDA
// kernel: skipped with a message while linear_attn refuses CUDA tensors) against the naive f64
// SSD, y, the final state and every gradient, state0 included, B > 1, S not a multiple of the chunk.
#include <gtest/gtest.h>

#include "common/bf16_baseline.h"
#include "core/cuda_check.h"
#include "core/error.h"
#include "ssm_reference.h"

using namespace lctx;
using namespace lctx::test;
using ssm::Softplus;
using ssm::SsdInputs;

namespace {

const Device kGpu = Device::cuda(0);

// The inputs in `dt` on `dev` (x, dt, B, C in dt; A, D, dt_bias, state0 in its wide dtype).
SsdInputs convert(const SsdInputs& in, DType dt, Device dev) {
  const auto cv = [&](const Tensor& t, DType d) { return t.defined() ? t.to(d).to(dev) : Tensor(); };
  const DType w = wide_dtype(dt);
  return {cv(in.x, dt), cv(in.dt, dt), cv(in.A, w),       cv(in.B, dt),
          cv(in.C, dt), cv(in.D, w),   cv(in.dt_bias, w), cv(in.state0, w)};
}
SsdInputs rounded(const SsdInputs& in) {
  const auto r = [](const Tensor& t) { return t.defined() ? round_bf16(t) : Tensor(); };
  return {r(in.x), r(in.dt), r(in.A), r(in.B), r(in.C), r(in.D), r(in.dt_bias), r(in.state0)};
}

class SsdGpu : public ::testing::TestWithParam<SsdCase> {};

#ifdef LCTX_HAVE_CUDA  // the maps are internal to lctx (ssd.h detail): CUDA builds only
// The maps' outputs: linear_attn's inputs and the D skip (forward), the gradient map (backward).
struct Maps {
  Tensor dt, raw, v, log_decay, y;     // forward
  Tensor dx, d_dt, dA, dD, d_dt_bias;  // backward
};

// The maps in f64 from their formulas (ssd.h): o, dv, dlog the stand-ins for linear_attn's
// output and gradients.
Maps naive_maps(const SsdInputs& in, const Tensor& o, const Tensor& dy, const Tensor& dv, const Tensor& dlog,
                Softplus sp) {
  const int64_t B = in.x.size(0), S = in.x.size(1), H = in.x.size(2), P = in.x.size(3), rows = B * S * H;
  const auto x = in.x.to_vector(), dtr = in.dt.to_vector(), A = in.A.to_vector(), D = in.D.to_vector(),
             bias = in.dt_bias.to_vector(), ov = o.to_vector(), gy = dy.to_vector(), gv = dv.to_vector(),
             gl = dlog.to_vector();
  std::vector<double> dt(rows), raw(rows), ld(rows), v(rows * P), y(rows * P), dx(rows * P), ddt(rows), dA(H), dD(H),
      db(H);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = r % H;
    raw[r] = dtr[r] + bias[h];
    dt[r] = naive_softplus(raw[r], sp);
    ld[r] = dt[r] * A[h];
    double g = gl[r] * A[h];
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i = r * P + p;
      v[i] = dt[r] * x[i];
      y[i] = ov[i] + D[h] * x[i];
      dx[i] = gv[i] * dt[r] + D[h] * gy[i];
      g += gv[i] * x[i];
      dD[h] += gy[i] * x[i];
    }
    ddt[r] = sp == Softplus::on ? g / (1 + std::exp(-raw[r])) : g;
    dA[h] += gl[r] * dt[r];
    db[h] += ddt[r];
  }
  const auto t = [](const Shape& s, const std::vector<double>& v) { return Tensor::from_vector(s, v, DType::f64); };
  const Shape bsh = {B, S, H}, x_shape = in.x.shape();
  return {t(bsh, dt),     t(bsh, raw), t(x_shape, v), t(bsh, ld), t(x_shape, y),
          t(x_shape, dx), t(bsh, ddt), t({H}, dA),    t({H}, dD), t({H}, db)};
}

// The CUDA maps on inputs in `dt`.
Maps gpu_maps(const SsdInputs& in64, const Tensor& o64, const Tensor& dy64, const Tensor& dv64, const Tensor& dlog64,
              Softplus sp, DType dt) {
  const SsdInputs in = convert(in64, dt, kGpu);
  const DType w = wide_dtype(dt);
  Maps m;
  m.dt = Tensor::empty(in.dt.shape(), w, kGpu);
  m.raw = Tensor::empty(in.dt.shape(), w, kGpu);
  m.log_decay = Tensor::empty(in.dt.shape(), w, kGpu);
  m.v = Tensor::empty(in.x.shape(), dt, kGpu);
  ssm::detail::ssd_map_inputs_cuda(m.dt, m.raw, m.v, m.log_decay, in, sp, {});
  m.y = o64.to(dt).to(kGpu);
  ssm::detail::ssd_add_skip_cuda(m.y, in.x, in.D, {});
  ssm::SsdGrads g;
  g.dx = Tensor::empty(in.x.shape(), dt, kGpu);
  g.d_dt = Tensor::empty(in.dt.shape(), dt, kGpu);
  g.dA = Tensor::zeros(in.A.shape(), w, kGpu);
  g.dD = Tensor::zeros(in.A.shape(), w, kGpu);
  g.d_dt_bias = Tensor::zeros(in.A.shape(), w, kGpu);
  ssm::detail::ssd_map_grads_cuda(g, in, dy64.to(dt).to(kGpu), dv64.to(dt).to(kGpu), dlog64.to(w).to(kGpu), m.dt, m.raw,
                                  sp, {});
  m.dx = g.dx, m.d_dt = g.d_dt, m.dA = g.dA, m.dD = g.dD, m.d_dt_bias = g.d_dt_bias;
  return m;
}

std::vector<std::pair<const char*, Tensor Maps::*>> map_fields() {
  return {{"dt", &Maps::dt},     {"raw", &Maps::raw},
          {"v", &Maps::v},       {"log_decay", &Maps::log_decay},
          {"y", &Maps::y},       {"dx", &Maps::dx},
          {"d_dt", &Maps::d_dt}, {"dA", &Maps::dA},
          {"dD", &Maps::dD},     {"d_dt_bias", &Maps::d_dt_bias}};
}

TEST_P(SsdGpu, MapsMatchFormulas) {
  LCTX_REQUIRE_GPU();
  const SsdCase c = GetParam();
  const SsdInputs in = make_ssd_inputs(c, 61);
  const Tensor o = normal(in.x.shape(), 71), dy = normal(in.x.shape(), 72), dv = normal(in.x.shape(), 73),
               dlog = normal(in.dt.shape(), 74);
  const Softplus sp = c.opt.softplus;
  const Maps exact = naive_maps(in, o, dy, dv, dlog, sp);
  const SsdInputs inr = rounded(in);
  const Tensor orr = round_bf16(o), dyr = round_bf16(dy), dvr = round_bf16(dv), dlr = round_bf16(dlog);
  const Maps ref = naive_maps(inr, orr, dyr, dvr, dlr, sp);
  const Maps gpu = gpu_maps(inr, orr, dyr, dvr, dlr, sp, DType::bf16);
  const Maps g32 = gpu_maps(in, o, dy, dv, dlog, sp, DType::f32);
  for (const auto& [name, f] : map_fields()) {
    expect_within_bf16_baseline(c.name + " " + name, gpu.*f, ref.*f, exact.*f);
    EXPECT_LE(rel_error(g32.*f, exact.*f), 1e-5) << c.name << " f32 " << name;
  }
}
#endif

TEST_P(SsdGpu, WholeOpWithinTwiceBaseline) {
  LCTX_REQUIRE_GPU();
  const SsdCase c = GetParam();
  const SsdInputs in = make_ssd_inputs(c, 81);
  const Tensor dy = normal(in.x.shape(), 82), dfin = normal({c.B, c.H, c.N, c.P}, 83);
  const SsdInputs gin = convert(rounded(in), DType::bf16, kGpu);
  ssm::SsdOutput gout;
  try {
    gout = ssm::ssd_forward(gin, c.opts());
  } catch (const Error& e) {
    if (std::string(e.what()).find("linear attention has only its CPU implementation") != std::string::npos)
      GTEST_SKIP() << "linear_attn has no CUDA kernel in this tree yet: " << e.what();
    throw;
  }
  const ssm::SsdGrads gg = ssm::ssd_backward(gin, round_bf16(dy).to(DType::bf16).to(kGpu),
                                             round_bf16(dfin).to(DType::f32).to(kGpu), c.opts());
  const auto both = [&](const SsdInputs& x, const Tensor& g, const Tensor& gf) {
    return std::pair{ssm::ssd_forward(x, c.opts()), ssm::ssd_backward(x, g, gf, c.opts())};
  };
  const auto [eo, eg] = both(in, dy, dfin);
  const auto [ro, rg] = both(rounded(in), round_bf16(dy), round_bf16(dfin));
  expect_within_bf16_baseline(c.name + " y", gout.y, ro.y, eo.y);
  expect_within_bf16_baseline(c.name + " final_state", gout.final_state, ro.final_state, eo.final_state);
  for (const auto& [name, f] :
       std::vector<std::pair<const char*, Tensor ssm::SsdGrads::*>>{{"dx", &ssm::SsdGrads::dx},
                                                                    {"d_dt", &ssm::SsdGrads::d_dt},
                                                                    {"dA", &ssm::SsdGrads::dA},
                                                                    {"dB", &ssm::SsdGrads::dB},
                                                                    {"dC", &ssm::SsdGrads::dC},
                                                                    {"dD", &ssm::SsdGrads::dD},
                                                                    {"d_dt_bias", &ssm::SsdGrads::d_dt_bias},
                                                                    {"d_state0", &ssm::SsdGrads::d_state0}})
    expect_within_bf16_baseline(c.name + " " + name, gg.*f, rg.*f, eg.*f);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SsdGpu,
    ::testing::Values(
        SsdCase{.name = "b2_h6_p64", .B = 2, .S = 77, .H = 6, .P = 64, .G = 2, .N = 16, .opt = {.chunk = 64}},
        SsdCase{.name = "b1_h3_p40_softplus_off",
                .B = 1,
                .S = 130,
                .H = 3,
                .P = 40,
                .G = 1,
                .N = 8,
                .opt = {.softplus = Softplus::off, .chunk = 64}},
        SsdCase{.name = "b3_h8_p32", .B = 3, .S = 33, .H = 8, .P = 32, .G = 4, .N = 16, .opt = {.chunk = 16}}),
    [](const auto& info) { return info.param.name; });

}  // namespace
