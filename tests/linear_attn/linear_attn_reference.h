// Test-side helpers for linear attention: the cases the suites sweep, random inputs drawn with
// the Philox RNG, and a naive f64 reference written from the definition, independently of
// lib/linear_attn (no chunks, no cumulative sums: decay products multiplied out):
//   causal      o_i = sum_{j<=i} (prod_{l=j+1..i} lambda_l) (q_i . k_j) v_j + (prod_{l<=i} lambda_l) q_i^T S0
//   non-causal  o_i = sum_j (q_i . k_j) v_j + q_i^T S0
// normalised by the same sums with v_j -> 1 and S0 -> its z column, plus eps.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "common/expect_error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "linear_attn/linear_attn.h"

namespace lctx::test {

struct LinearAttnCase {
  std::string name;
  int64_t B = 1, S = 16;
  int Hq = 2, Hk = 2, Hv = 2, Dk = 4, Dv = 3;
  linear_attn::Mask mask = linear_attn::Mask::causal;
  linear_attn::Decay decay = linear_attn::Decay::none;
  linear_attn::Normalize norm = linear_attn::Normalize::off;
  int64_t chunk = 4;
  bool state0 = true;
  double decay_lo = -0.5, decay_hi = -0.01;  // range of the log-decays drawn
  int H() const { return std::max({Hq, Hk, Hv}); }
  int cols() const { return Dv + (norm == linear_attn::Normalize::on ? 1 : 0); }
  linear_attn::LinearAttnOptions opts() const {
    return {.mask = mask, .decay = decay, .normalize = norm, .chunk = chunk};
  }
};

inline void PrintTo(const LinearAttnCase& c, std::ostream* os) { *os << c.name; }
inline std::string la_case_name(const testing::TestParamInfo<LinearAttnCase>& info) { return info.param.name; }

// f64 CPU inputs of a case. Normalised cases draw positive features and a positive z column
// (as a positive feature map gives), so denominators stay away from 0.
inline linear_attn::LinearAttnInputs make_la_inputs(const LinearAttnCase& c, uint64_t seed) {
  using linear_attn::Decay;
  const bool pos = c.norm == linear_attn::Normalize::on;
  linear_attn::LinearAttnInputs in;
  in.q = Tensor::empty({c.B, c.S, c.Hq, c.Dk}, DType::f64);
  in.k = Tensor::empty({c.B, c.S, c.Hk, c.Dk}, DType::f64);
  in.v = Tensor::empty({c.B, c.S, c.Hv, c.Dv}, DType::f64);
  for (auto [t, off] : {std::pair{&in.q, 0}, std::pair{&in.k, 1}}) {
    if (pos)
      rng_uniform(*t, seed + off, 0, 0.05, 1.0);
    else
      rng_normal(*t, seed + off, 0);
  }
  rng_normal(in.v, seed + 2, 0);
  if (c.decay == Decay::fixed || c.decay == Decay::learned) {
    in.log_decay = Tensor::empty({c.H()}, DType::f64);
    rng_uniform(in.log_decay, seed + 3, 0, c.decay_lo, c.decay_hi);
  } else if (c.decay == Decay::data) {
    in.log_decay = Tensor::empty({c.B, c.S, c.H()}, DType::f64);
    rng_uniform(in.log_decay, seed + 3, 0, c.decay_lo, c.decay_hi);
  }
  if (c.state0) {
    in.state0 = Tensor::empty({c.B, c.H(), c.Dk, c.cols()}, DType::f64);
    rng_normal(in.state0, seed + 4, 0, 0.0, 0.5);
    if (pos) {
      Tensor z = Tensor::empty({c.B, c.H(), c.Dk, 1}, DType::f64);
      rng_uniform(z, seed + 5, 0, 0.5, 2.0);
      in.state0.slice(3, c.Dv, c.Dv + 1).copy_from(z);
    }
  }
  return in;
}

// The naive reference: o [B, S, H, Dv] and the final state [B, H, Dk, cols] in f64.
struct NaiveLinearAttn {
  Tensor o, final_state;
};

inline NaiveLinearAttn naive_linear_attn(const LinearAttnCase& c, const linear_attn::LinearAttnInputs& in,
                                         double eps = 1e-6) {
  using linear_attn::Decay;
  const int H = c.H(), cols = c.cols();
  const bool causal = c.mask == linear_attn::Mask::causal, norm = c.norm == linear_attn::Normalize::on;
  const auto q = in.q.to_vector(), k = in.k.to_vector(), v = in.v.to_vector();
  const auto g = in.log_decay.defined() ? in.log_decay.to_vector() : std::vector<double>();
  const auto s0 = in.state0.defined() ? in.state0.to_vector() : std::vector<double>(c.B * H * c.Dk * cols, 0.0);
  auto lambda = [&](int64_t b, int64_t t, int h) {
    if (c.decay == Decay::none) return 1.0;
    return std::exp(c.decay == Decay::data ? g[(b * c.S + t) * H + h] : g[h]);
  };
  auto qe = [&](int64_t b, int64_t t, int h, int d) { return q[((b * c.S + t) * c.Hq + h / (H / c.Hq)) * c.Dk + d]; };
  auto ke = [&](int64_t b, int64_t t, int h, int d) { return k[((b * c.S + t) * c.Hk + h / (H / c.Hk)) * c.Dk + d]; };
  // Column e of the augmented v (the ones column when normalised).
  auto ve = [&](int64_t b, int64_t t, int h, int e) {
    return e == c.Dv ? 1.0 : v[((b * c.S + t) * c.Hv + h / (H / c.Hv)) * c.Dv + e];
  };
  auto s0e = [&](int64_t b, int h, int d, int e) { return s0[((b * H + h) * c.Dk + d) * cols + e]; };
  std::vector<double> o(c.B * c.S * H * c.Dv), fin(c.B * H * c.Dk * cols);
  std::vector<double> u(cols);
  for (int64_t b = 0; b < c.B; ++b)
    for (int h = 0; h < H; ++h) {
      for (int64_t i = 0; i < c.S; ++i) {
        std::fill(u.begin(), u.end(), 0.0);
        double prod = 1;  // prod_{l=j+1..i} lambda_l, j walking down from i
        for (int64_t j = causal ? i : c.S - 1; j >= 0; --j) {
          double qk = 0;
          for (int d = 0; d < c.Dk; ++d) qk += qe(b, i, h, d) * ke(b, j, h, d);
          for (int e = 0; e < cols; ++e) u[e] += (causal ? prod : 1.0) * qk * ve(b, j, h, e);
          prod *= lambda(b, j, h);
        }
        // prod is now prod_{l=0..i} lambda_l (causal)
        for (int d = 0; d < c.Dk; ++d)
          for (int e = 0; e < cols; ++e) u[e] += (causal ? prod : 1.0) * qe(b, i, h, d) * s0e(b, h, d, e);
        const double den = norm ? u[c.Dv] + eps : 1.0;
        for (int e = 0; e < c.Dv; ++e) o[((b * c.S + i) * H + h) * c.Dv + e] = u[e] / den;
      }
      double prod = 1;
      for (int64_t j = c.S - 1; j >= -1; --j) {  // S_T = sum_j (prod_{l>j} lambda_l) k_j v_j^T + (prod_l lambda_l) S0
        for (int d = 0; d < c.Dk; ++d)
          for (int e = 0; e < cols; ++e)
            fin[((b * H + h) * c.Dk + d) * cols + e] +=
                prod * (j >= 0 ? ke(b, j, h, d) * ve(b, j, h, e) : s0e(b, h, d, e));
        if (j >= 0 && causal) prod *= lambda(b, j, h);
      }
    }
  return {Tensor::from_vector({c.B, c.S, H, c.Dv}, o, DType::f64),
          Tensor::from_vector({c.B, H, c.Dk, cols}, fin, DType::f64)};
}

}  // namespace lctx::test
