// Dense f64 building blocks of the mixer tests' references (test_local_global, test_memory),
// written loop by loop without flash or any merge: projections through Wqkv, RoPE (the
// library's op, tested on its own), and plain masked softmax attention over explicit rows.
// Dims is any struct with the model dim D, heads H, KV heads Hk and head dim hd.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "core/tensor.h"
#include "ops/rope.h"

namespace lctx::test::dense {

using Vec = std::vector<double>;

// y [N, M] = x [N, K] w^T (w [M, K]).
inline Vec matmul_t(const Vec& x, const Vec& w, int64_t N, int64_t K, int64_t M) {
  Vec y(static_cast<size_t>(N * M), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += x[n * K + k] * w[m * K + k];
      y[n * M + m] = s;
    }
  return y;
}

struct Qkv {
  Vec q, k, v;  // [N, H, hd], [N, Hk, hd], [N, Hk, hd]
};

// Rows of x [N, D] through Wqkv.
template <class Dims>
Qkv project(const Vec& x, int64_t N, const Vec& wqkv, const Dims& d) {
  const int64_t C = (d.H + 2 * d.Hk) * d.hd;
  const Vec all = matmul_t(x, wqkv, N, d.D, C);
  Qkv r;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      Vec& to = c < d.H * d.hd ? r.q : c < (d.H + d.Hk) * d.hd ? r.k : r.v;
      to.push_back(all[n * C + c]);
    }
  return r;
}

// RoPE at positions 0..N-1 of [N, heads, hd] rows.
inline Vec rope(const Vec& t, int64_t N, int64_t heads, int64_t hd) {
  Tensor x = Tensor::from_vector({1, N, heads, hd}, t, DType::f64), out = Tensor::empty(x.shape(), DType::f64);
  Vec pos(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) pos[static_cast<size_t>(i)] = static_cast<double>(i);
  ops::rope_forward(out, x, Tensor::from_vector({N}, pos, DType::i32));
  return out.to_vector();
}

// Block means of rows [S, Hk, hd]: [S / b, Hk, hd] (memory's and nsa's compressed rows).
template <class Dims>
Vec block_means(const Vec& rows, int64_t b, const Dims& d) {
  const int64_t n = d.S / b, R = d.Hk * d.hd;
  Vec m(static_cast<size_t>(n * R), 0.0);
  for (int64_t c = 0; c < n; ++c)
    for (int64_t t = 0; t < b; ++t)
      for (int64_t e = 0; e < R; ++e) m[c * R + e] += rows[(c * b + t) * R + e] / static_cast<double>(b);
  return m;
}

// Softmax attention of queries [Nq, H, hd] over keys/values [Nk, Hk, hd] where visible(i, j);
// 0 for a query that sees none.
template <class Dims>
Vec attend(const Vec& q, const Vec& k, const Vec& v, int64_t Nq, int64_t Nk, const Dims& d,
           const std::function<bool(int64_t, int64_t)>& visible) {
  Vec o(static_cast<size_t>(Nq * d.H * d.hd), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.hd));
  for (int64_t i = 0; i < Nq; ++i)
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t kh = h / (d.H / d.Hk);
      Vec s(static_cast<size_t>(Nk), -std::numeric_limits<double>::infinity());
      double mx = -std::numeric_limits<double>::infinity(), sum = 0;
      for (int64_t j = 0; j < Nk; ++j) {
        if (!visible(i, j)) continue;
        double dot = 0;
        for (int64_t e = 0; e < d.hd; ++e) dot += q[(i * d.H + h) * d.hd + e] * k[(j * d.Hk + kh) * d.hd + e];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      for (int64_t j = 0; j < Nk; ++j) sum += std::isinf(s[j]) ? 0.0 : std::exp(s[j] - mx);
      for (int64_t j = 0; j < Nk; ++j) {
        if (std::isinf(s[j])) continue;
        const double p = std::exp(s[j] - mx) / sum;
        for (int64_t e = 0; e < d.hd; ++e) o[(i * d.H + h) * d.hd + e] += p * v[(j * d.Hk + kh) * d.hd + e];
      }
    }
  return o;
}

inline Vec concat(const Vec& a, const Vec& b) {
  Vec r = a;
  r.insert(r.end(), b.begin(), b.end());
  return r;
}

}  // namespace lctx::test::dense
