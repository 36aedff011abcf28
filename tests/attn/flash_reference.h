// Test-side helpers for flash attention: configurations covering every option, random
// inputs drawn with the Philox RNG, and a naive O(S^2) f64 reference written independently
// of lib/attn (its own mask rules), forward and backward.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attn/flash.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace lctx::test {

// Document ids of a case: none; regular (13-token documents, shifted per batch row); random
// (lengths from 1 to 300 drawn from a fixed seed per row: one-token documents and documents
// longer than a tile); single (one document over every position); unsorted (the regular
// documents with scrambled ids, not non-decreasing: the kernels' slow path).
enum class Docs { none, regular, random, single, unsorted };

inline int32_t doc_id(Docs d, int64_t b, int64_t pos) {
  switch (d) {
    case Docs::none:
    case Docs::single: return 0;
    case Docs::regular: return static_cast<int32_t>((pos + 5 * b + 1000) / 13);
    case Docs::unsorted: return static_cast<int32_t>((pos + 5 * b + 1000) / 13 * 7919 % 31);
    case Docs::random: {
      static constexpr int64_t kLen[8] = {1, 1, 2, 5, 13, 40, 97, 300};
      uint64_t x = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(b + 1);
      int32_t id = 0;
      for (int64_t start = 0;; ++id) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        start += kLen[(x >> 33) % 8];
        if (pos < start) return id;
      }
    }
  }
  return 0;
}

struct FlashCase {
  std::string name;
  int64_t B = 1, Sq = 16, Sk = 16;
  int Hq = 2, Hkv = 2, D = 16;
  bool causal = false;
  int64_t wl = -1, wr = -1, qoff = 0, koff = 0;
  bool alibi = false;
  Docs docs = Docs::none;
  float scale = 0.0f;
};

inline void PrintTo(const FlashCase& c, std::ostream* os) { *os << c.name; }
inline std::string case_name(const testing::TestParamInfo<FlashCase>& info) { return info.param.name; }

struct FlashInputs {
  Tensor q, k, v, dout;  // f64 CPU
  attn::FlashOptions opts;
};

inline FlashInputs make_flash_inputs(const FlashCase& c, uint64_t seed) {
  FlashInputs in;
  in.q = Tensor::empty({c.B, c.Sq, c.Hq, c.D}, DType::f64);
  in.k = Tensor::empty({c.B, c.Sk, c.Hkv, c.D}, DType::f64);
  in.v = Tensor::empty({c.B, c.Sk, c.Hkv, c.D}, DType::f64);
  in.dout = Tensor::empty({c.B, c.Sq, c.Hq, c.D}, DType::f64);
  rng_normal(in.q, seed, 0);
  rng_normal(in.k, seed + 1, 0);
  rng_normal(in.v, seed + 2, 0);
  rng_normal(in.dout, seed + 3, 0);
  auto& o = in.opts;
  o.softmax_scale = c.scale;
  o.mask = c.causal ? attn::Mask::causal : attn::Mask::none;
  o.window_left = c.wl;
  o.window_right = c.wr;
  o.q_offset = c.qoff;
  o.k_offset = c.koff;
  if (c.alibi) {
    std::vector<double> s(c.Hq);
    for (int h = 0; h < c.Hq; ++h) s[h] = std::pow(2.0, -8.0 * (h + 1) / c.Hq);
    o.alibi_slopes = Tensor::from_vector({c.Hq}, s, DType::f32);
  }
  if (c.docs != Docs::none) {
    std::vector<double> qd(c.B * c.Sq), kd(c.B * c.Sk);
    for (int64_t b = 0; b < c.B; ++b) {
      for (int64_t i = 0; i < c.Sq; ++i) qd[b * c.Sq + i] = doc_id(c.docs, b, c.qoff + i);
      for (int64_t j = 0; j < c.Sk; ++j) kd[b * c.Sk + j] = doc_id(c.docs, b, c.koff + j);
    }
    o.q_doc_ids = Tensor::from_vector({c.B, c.Sq}, qd, DType::i32);
    o.k_doc_ids = Tensor::from_vector({c.B, c.Sk}, kd, DType::i32);
  }
  return in;
}

// Naive attention in f64 straight from the definition (independent of lib/attn).
struct NaiveAttention {
  const FlashCase& c;
  const FlashInputs& in;
  std::vector<double> q, k, v, slopes, qdoc, kdoc;
  double scale;

  NaiveAttention(const FlashCase& c_, const FlashInputs& in_) : c(c_), in(in_) {
    q = in.q.to_vector();
    k = in.k.to_vector();
    v = in.v.to_vector();
    if (c.alibi) slopes = in.opts.alibi_slopes.to_vector();
    if (c.docs != Docs::none) {
      qdoc = in.opts.q_doc_ids.to_vector();
      kdoc = in.opts.k_doc_ids.to_vector();
    }
    scale = c.scale > 0 ? static_cast<double>(c.scale) : 1.0 / std::sqrt(static_cast<double>(c.D));
  }
  double qe(int64_t b, int64_t i, int h, int d) const { return q[((b * c.Sq + i) * c.Hq + h) * c.D + d]; }
  double ke(int64_t b, int64_t j, int h, int d) const { return k[((b * c.Sk + j) * c.Hkv + h) * c.D + d]; }
  double ve(int64_t b, int64_t j, int h, int d) const { return v[((b * c.Sk + j) * c.Hkv + h) * c.D + d]; }
  bool visible(int64_t b, int64_t i, int64_t j) const {
    const int64_t qp = c.qoff + i, kp = c.koff + j;
    if (c.causal && kp > qp) return false;
    if (c.wl >= 0 && qp - kp > c.wl) return false;
    if (c.wr >= 0 && kp - qp > c.wr) return false;
    if (c.docs != Docs::none && qdoc[b * c.Sq + i] != kdoc[b * c.Sk + j]) return false;
    return true;
  }
  double score(int64_t b, int h, int64_t i, int64_t j) const {
    const int hk = h / (c.Hq / c.Hkv);
    double s = 0;
    for (int d = 0; d < c.D; ++d) s += qe(b, i, h, d) * ke(b, j, hk, d);
    s *= scale;
    if (c.alibi) s -= slopes[h] * std::abs(static_cast<double>((c.qoff + i) - (c.koff + j)));
    return s;
  }

  // o [B, Sq, Hq, D], lse [B, Hq, Sq] (-inf for fully masked rows).
  void forward(Tensor& o_out, Tensor& lse_out) const {
    std::vector<double> o(c.B * c.Sq * c.Hq * c.D, 0.0), lse(c.B * c.Hq * c.Sq);
    std::vector<double> s(c.Sk);
    for (int64_t b = 0; b < c.B; ++b)
      for (int h = 0; h < c.Hq; ++h)
        for (int64_t i = 0; i < c.Sq; ++i) {
          double m = -INFINITY;
          for (int64_t j = 0; j < c.Sk; ++j) {
            s[j] = visible(b, i, j) ? score(b, h, i, j) : -INFINITY;
            m = std::max(m, s[j]);
          }
          double* oi = &o[((b * c.Sq + i) * c.Hq + h) * c.D];
          if (m == -INFINITY) {
            lse[(b * c.Hq + h) * c.Sq + i] = -INFINITY;
            continue;
          }
          double l = 0;
          for (int64_t j = 0; j < c.Sk; ++j)
            if (s[j] != -INFINITY) {
              const double p = std::exp(s[j] - m);
              l += p;
              for (int d = 0; d < c.D; ++d) oi[d] += p * ve(b, j, h / (c.Hq / c.Hkv), d);
            }
          for (int d = 0; d < c.D; ++d) oi[d] /= l;
          lse[(b * c.Hq + h) * c.Sq + i] = m + std::log(l);
        }
    o_out = Tensor::from_vector({c.B, c.Sq, c.Hq, c.D}, o, DType::f64);
    lse_out = Tensor::from_vector({c.B, c.Hq, c.Sq}, lse, DType::f64);
  }

  // Gradients given (possibly global) o and lse, as flash_backward defines them.
  attn::FlashGrads backward(const Tensor& o_t, const Tensor& lse_t, const Tensor& dout_t) const {
    const auto o = o_t.to_vector(), lse = lse_t.to_vector(), dout = dout_t.to_vector();
    std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
    const int G = c.Hq / c.Hkv;
    for (int64_t b = 0; b < c.B; ++b)
      for (int h = 0; h < c.Hq; ++h)
        for (int64_t i = 0; i < c.Sq; ++i) {
          const double L = lse[(b * c.Hq + h) * c.Sq + i];
          if (L == -INFINITY) continue;
          const int64_t qi = ((b * c.Sq + i) * c.Hq + h) * c.D;
          double Di = 0;
          for (int d = 0; d < c.D; ++d) Di += dout[qi + d] * o[qi + d];
          for (int64_t j = 0; j < c.Sk; ++j) {
            if (!visible(b, i, j)) continue;
            const int64_t kj = ((b * c.Sk + j) * c.Hkv + h / G) * c.D;
            const double p = std::exp(score(b, h, i, j) - L);
            double dp = 0;
            for (int d = 0; d < c.D; ++d) dp += dout[qi + d] * v[kj + d];
            const double ds = p * (dp - Di) * scale;
            for (int d = 0; d < c.D; ++d) {
              dv[kj + d] += p * dout[qi + d];
              dq[qi + d] += ds * k[kj + d];
              dk[kj + d] += ds * q[qi + d];
            }
          }
        }
    return {Tensor::from_vector(in.q.shape(), dq, DType::f64), Tensor::from_vector(in.k.shape(), dk, DType::f64),
            Tensor::from_vector(in.k.shape(), dv, DType::f64)};
  }
};

// lse comparison that treats -inf as a value: both -inf, or close relative to max(1, |ref|).
inline void expect_lse_close(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  const auto g = got.to_vector(), r = ref.to_vector();
  ASSERT_EQ(g.size(), r.size()) << what;
  double worst = 0;
  int64_t bad_inf = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_FALSE(std::isnan(g[i])) << what << ": lse[" << i << "] is NaN";
    if (std::isinf(r[i]) || std::isinf(g[i])) {
      bad_inf += !(g[i] == r[i]);
      continue;
    }
    worst = std::max(worst, std::abs(g[i] - r[i]) / std::max(1.0, std::abs(r[i])));
  }
  EXPECT_EQ(bad_inf, 0) << what << ": -inf rows differ";
  EXPECT_LE(worst, tol) << what << ": lse";
}

inline void expect_no_nan(const Tensor& t, const std::string& what) {
  int64_t n = 0;
  for (double x : t.to_vector()) n += std::isnan(x);
  EXPECT_EQ(n, 0) << what << " " << t.str() << " holds NaN";
}

}  // namespace lctx::test
