// Test-side helpers for lib/ssm: the cases the suites sweep, random f64 inputs drawn with the
// Philox RNG, and naive f64 references written from the definitions, independently of lib/ssm
// and lib/linear_attn (a plain loop over t, no chunks): the selective scan, the causal conv1d
// and Mamba-2 SSD; plus the loss and sequence-splitting helpers the gradient and chaining
// tests share.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "ssm/causal_conv1d.h"
#include "ssm/selective_scan.h"
#include "ssm/ssd.h"

namespace lctx::test {

inline double naive_softplus(double v, ssm::Softplus sp) {
  return sp == ssm::Softplus::on ? std::log1p(std::exp(v)) : v;
}
inline double naive_silu(double v) { return v / (1 + std::exp(-v)); }

// The options every case has: which optional inputs exist, softplus, chunk length.
struct Optional {
  bool skip = true, gate = true, bias = true, state0 = true;
  ssm::Softplus softplus = ssm::Softplus::on;
  int64_t chunk = 4;
};

// dt_raw and dt_bias drawn so that dt stays in a Mamba-like range either way.
inline void draw_dt(Tensor& dt, Tensor* bias, ssm::Softplus sp, uint64_t seed) {
  if (sp == ssm::Softplus::on)
    rng_normal(dt, seed, 0, -1.0, 0.5);
  else
    rng_uniform(dt, seed, 0, 0.05, 0.5);
  if (bias) rng_uniform(*bias, seed + 1, 0, sp == ssm::Softplus::on ? -0.5 : 0.0, 0.1);
}

inline Tensor normal(const Shape& shape, uint64_t seed, double std = 1.0) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0, 0.0, std);
  return t;
}

// ---- selective scan ----
struct ScanCase {
  std::string name;
  int64_t B = 2, S = 13;
  int D = 4, N = 3, G = 1;
  Optional opt = {};
  ssm::ScanOptions opts() const { return {.softplus = opt.softplus, .chunk = opt.chunk}; }
};

inline ssm::ScanInputs make_scan_inputs(const ScanCase& c, uint64_t seed) {
  ssm::ScanInputs in;
  in.x = normal({c.B, c.S, c.D}, seed);
  in.dt = Tensor::empty({c.B, c.S, c.D}, DType::f64);
  if (c.opt.bias) in.dt_bias = Tensor::empty({c.D}, DType::f64);
  draw_dt(in.dt, c.opt.bias ? &in.dt_bias : nullptr, c.opt.softplus, seed + 1);
  in.A = Tensor::empty({c.D, c.N}, DType::f64);
  rng_uniform(in.A, seed + 3, 0, -2.0, -0.3);
  in.B = normal({c.B, c.S, c.G, c.N}, seed + 4);
  in.C = normal({c.B, c.S, c.G, c.N}, seed + 5);
  if (c.opt.skip) in.D = normal({c.D}, seed + 6);
  if (c.opt.gate) in.z = normal({c.B, c.S, c.D}, seed + 7);
  if (c.opt.state0) in.state0 = normal({c.B, c.D, c.N}, seed + 8, 0.5);
  return in;
}

inline ssm::ScanOutput naive_scan(const ScanCase& c, const ssm::ScanInputs& in) {
  const auto x = in.x.to_vector(), dtr = in.dt.to_vector(), A = in.A.to_vector(), Bm = in.B.to_vector(),
             Cm = in.C.to_vector();
  auto opt = [](const Tensor& t) { return t.defined() ? t.to_vector() : std::vector<double>(); };
  const auto D = opt(in.D), z = opt(in.z), bias = opt(in.dt_bias), s0 = opt(in.state0);
  std::vector<double> y(c.B * c.S * c.D), fin(c.B * c.D * c.N);
  for (int64_t b = 0; b < c.B; ++b)
    for (int d = 0; d < c.D; ++d) {
      const int g = d / (c.D / c.G);
      std::vector<double> h(c.N);
      for (int n = 0; n < c.N; ++n) h[n] = s0.empty() ? 0.0 : s0[(b * c.D + d) * c.N + n];
      for (int64_t t = 0; t < c.S; ++t) {
        const int64_t i = (b * c.S + t) * c.D + d;
        const double dt = naive_softplus(dtr[i] + (bias.empty() ? 0.0 : bias[d]), c.opt.softplus);
        double out = D.empty() ? 0.0 : D[d] * x[i];
        for (int n = 0; n < c.N; ++n) {
          const int64_t j = ((b * c.S + t) * c.G + g) * c.N + n;
          h[n] = std::exp(dt * A[d * c.N + n]) * h[n] + dt * Bm[j] * x[i];
          out += Cm[j] * h[n];
        }
        y[i] = z.empty() ? out : out * naive_silu(z[i]);
      }
      for (int n = 0; n < c.N; ++n) fin[(b * c.D + d) * c.N + n] = h[n];
    }
  return {Tensor::from_vector({c.B, c.S, c.D}, y, DType::f64), Tensor::from_vector({c.B, c.D, c.N}, fin, DType::f64)};
}

// ---- causal conv1d ----
struct ConvCase {
  std::string name;
  int64_t B = 2, S = 11;
  int C = 3, W = 4;
  bool bias = true, history = true;
  ssm::Activation act = ssm::Activation::silu;
  ssm::ConvOptions opts() const { return {.activation = act}; }
};

inline ssm::ConvInputs make_conv_inputs(const ConvCase& c, uint64_t seed) {
  ssm::ConvInputs in;
  in.x = normal({c.B, c.S, c.C}, seed);
  in.weight = normal({c.C, c.W}, seed + 1, 0.5);
  if (c.bias) in.bias = normal({c.C}, seed + 2);
  if (c.history) in.history = normal({c.B, c.W - 1, c.C}, seed + 3);
  return in;
}

inline Tensor naive_conv(const ConvCase& c, const ssm::ConvInputs& in) {
  const auto x = in.x.to_vector(), w = in.weight.to_vector();
  const auto bias = in.bias.defined() ? in.bias.to_vector() : std::vector<double>(c.C, 0.0);
  const auto hist = in.history.defined() ? in.history.to_vector() : std::vector<double>(c.B * (c.W - 1) * c.C, 0.0);
  std::vector<double> y(c.B * c.S * c.C);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t t = 0; t < c.S; ++t)
      for (int ch = 0; ch < c.C; ++ch) {
        double s = bias[ch];
        for (int k = 0; k < c.W; ++k) {  // tap k reads position t - (W-1) + k
          const int64_t pos = t - (c.W - 1) + k;
          s += w[ch * c.W + k] *
               (pos >= 0 ? x[(b * c.S + pos) * c.C + ch] : hist[(b * (c.W - 1) + pos + c.W - 1) * c.C + ch]);
        }
        y[(b * c.S + t) * c.C + ch] = c.act == ssm::Activation::silu ? naive_silu(s) : s;
      }
  return Tensor::from_vector({c.B, c.S, c.C}, y, DType::f64);
}

// ---- Mamba-2 SSD ----
struct SsdCase {
  std::string name;
  int64_t B = 2, S = 13;
  int H = 4, P = 3, G = 2, N = 3;
  Optional opt = {};
  ssm::SsdOptions opts() const { return {.softplus = opt.softplus, .chunk = opt.chunk}; }
};

inline ssm::SsdInputs make_ssd_inputs(const SsdCase& c, uint64_t seed) {
  ssm::SsdInputs in;
  in.x = normal({c.B, c.S, c.H, c.P}, seed);
  in.dt = Tensor::empty({c.B, c.S, c.H}, DType::f64);
  if (c.opt.bias) in.dt_bias = Tensor::empty({c.H}, DType::f64);
  draw_dt(in.dt, c.opt.bias ? &in.dt_bias : nullptr, c.opt.softplus, seed + 1);
  in.A = Tensor::empty({c.H}, DType::f64);
  rng_uniform(in.A, seed + 3, 0, -2.0, -0.3);
  in.B = normal({c.B, c.S, c.G, c.N}, seed + 4);
  in.C = normal({c.B, c.S, c.G, c.N}, seed + 5);
  if (c.opt.skip) in.D = normal({c.H}, seed + 6);
  if (c.opt.state0) in.state0 = normal({c.B, c.H, c.N, c.P}, seed + 8, 0.5);
  return in;
}

// h [N, P] per head: h = exp(dt A) h + B (dt x)^T, y = h^T C + D x.
inline ssm::SsdOutput naive_ssd(const SsdCase& c, const ssm::SsdInputs& in) {
  const auto x = in.x.to_vector(), dtr = in.dt.to_vector(), A = in.A.to_vector(), Bm = in.B.to_vector(),
             Cm = in.C.to_vector();
  auto opt = [](const Tensor& t) { return t.defined() ? t.to_vector() : std::vector<double>(); };
  const auto D = opt(in.D), bias = opt(in.dt_bias), s0 = opt(in.state0);
  std::vector<double> y(c.B * c.S * c.H * c.P), fin(c.B * c.H * c.N * c.P);
  for (int64_t b = 0; b < c.B; ++b)
    for (int hd = 0; hd < c.H; ++hd) {
      const int g = hd / (c.H / c.G);
      std::vector<double> h(c.N * c.P);
      for (int i = 0; i < c.N * c.P; ++i) h[i] = s0.empty() ? 0.0 : s0[(b * c.H + hd) * c.N * c.P + i];
      for (int64_t t = 0; t < c.S; ++t) {
        const int64_t r = (b * c.S + t) * c.H + hd, j = ((b * c.S + t) * c.G + g) * c.N;
        const double dt = naive_softplus(dtr[r] + (bias.empty() ? 0.0 : bias[hd]), c.opt.softplus);
        const double a = std::exp(dt * A[hd]);
        for (int p = 0; p < c.P; ++p) {
          double out = D.empty() ? 0.0 : D[hd] * x[r * c.P + p];
          for (int n = 0; n < c.N; ++n) {
            double& hv = h[n * c.P + p];
            hv = a * hv + Bm[j + n] * dt * x[r * c.P + p];
            out += Cm[j + n] * hv;
          }
          y[r * c.P + p] = out;
        }
      }
      for (int i = 0; i < c.N * c.P; ++i) fin[(b * c.H + hd) * c.N * c.P + i] = h[i];
    }
  return {Tensor::from_vector({c.B, c.S, c.H, c.P}, y, DType::f64),
          Tensor::from_vector({c.B, c.H, c.N, c.P}, fin, DType::f64)};
}

inline void PrintTo(const ScanCase& c, std::ostream* os) { *os << c.name; }
inline void PrintTo(const ConvCase& c, std::ostream* os) { *os << c.name; }
inline void PrintTo(const SsdCase& c, std::ostream* os) { *os << c.name; }

// ---- shared helpers ----
// sum over pairs of sum(a * w): the scalar loss of the gradient checks (dL/da = w).
inline double weighted_sum(std::initializer_list<std::pair<Tensor, Tensor>> pairs) {
  double s = 0;
  for (const auto& [a, w] : pairs) {
    const auto va = a.to_vector(), vw = w.to_vector();
    for (size_t i = 0; i < va.size(); ++i) s += va[i] * vw[i];
  }
  return s;
}

// Rows [t0, t1) of a [B, S, ...] tensor, contiguous (undefined stays undefined).
inline Tensor rows(const Tensor& t, int64_t t0, int64_t t1) {
  return t.defined() ? t.slice(1, t0, t1).contiguous() : Tensor();
}

// a + b (a new tensor).
inline Tensor plus(const Tensor& a, const Tensor& b) {
  Tensor c = a.clone();
  c.add_from(b);
  return c;
}

// The tensor in `t` converted to dtype (undefined stays undefined).
inline Tensor as(const Tensor& t, DType d) { return t.defined() ? t.to(d) : Tensor(); }

}  // namespace lctx::test
