// Test-side helpers for block masks and strided attention: the patterns under test, each with
// its visibility rule written from the definitions (independent of sparse_visible), random
// inputs, and a dense f64 attention with an arbitrary mask, forward and backward.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attn/block_mask.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace lctx::test {

using Rule = std::function<bool(int64_t i, int64_t j)>;

struct PatternCase {
  std::string name;
  std::shared_ptr<const attn::BlockMask> mask;
  Rule rule;
};
inline void PrintTo(const PatternCase& c, std::ostream* os) { *os << c.name; }

inline Rule window_rule(int64_t w, bool causal) {
  return [=](int64_t i, int64_t j) { return causal ? j <= i && i - j < w : std::abs(i - j) < w; };
}
inline Rule strided_rule(int64_t w, int64_t s) {
  return [=](int64_t i, int64_t j) { return j <= i && (i - j < w || (i - j) % s == 0); };
}
inline Rule global_rule(int64_t g, bool causal) {
  return [=](int64_t i, int64_t j) { return causal ? j <= i && j < g : j < g || i < g; };
}
inline Rule random_rule(const attn::BlockMask& m) {
  const auto bits = m.random_bits();
  const int64_t rb = m.pattern().random_block, words = m.pattern().random_words;
  const bool causal = m.pattern().causal;
  return [=](int64_t i, int64_t j) {
    const int64_t kb = j / rb;
    return (!causal || j <= i) && ((bits[static_cast<size_t>(i / rb * words + kb / 32)] >> (kb % 32)) & 1u);
  };
}
inline Rule either(Rule a, Rule b) { return [=](int64_t i, int64_t j) { return a(i, j) || b(i, j); }; }

// Every builder and a few unions, at lengths that are and are not multiples of the tiles.
inline std::vector<PatternCase> pattern_cases() {
  using namespace attn;
  std::vector<PatternCase> v;
  v.push_back({"window_causal", window_block_mask(300, 70), window_rule(70, true)});
  v.push_back({"window_bidir", window_block_mask(257, 40, Mask::none), window_rule(40, false)});
  v.push_back({"window_whole", window_block_mask(130, 130), window_rule(130, true)});
  v.push_back({"strided", strided_block_mask(400, 50, 16), strided_rule(50, 16)});
  v.push_back({"strided_odd", strided_block_mask(333, 64, 7), strided_rule(64, 7)});
  v.push_back({"global_causal", global_block_mask(300, 5), global_rule(5, true)});
  v.push_back({"global_bidir", global_block_mask(300, 70, Mask::none), global_rule(70, false)});
  auto rnd = random_block_mask(500, 64, 2, 7);
  v.push_back({"random_causal", rnd, random_rule(*rnd)});
  auto rnd_b = random_block_mask(300, 32, 3, 9, Mask::none);
  v.push_back({"random_bidir", rnd_b, random_rule(*rnd_b)});
  v.push_back({"window_global", block_mask_union(*window_block_mask(520, 100), *global_block_mask(520, 8)),
               either(window_rule(100, true), global_rule(8, true))});
  v.push_back({"window_global_bidir",
               block_mask_union(*window_block_mask(300, 33, Mask::none), *global_block_mask(300, 3, Mask::none)),
               either(window_rule(33, false), global_rule(3, false))});
  auto rnd2 = random_block_mask(450, 64, 1, 3);
  v.push_back({"window_random", block_mask_union(*window_block_mask(450, 64), *rnd2),
               either(window_rule(64, true), random_rule(*rnd2))});
  v.push_back({"strided_global", block_mask_union(*strided_block_mask(390, 20, 32), *global_block_mask(390, 4)),
               either(strided_rule(20, 32), global_rule(4, true))});
  return v;
}

struct Qkv {
  Tensor q, k, v, dout;  // f64 CPU
};
inline Qkv random_qkv(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, uint64_t seed) {
  Qkv x{Tensor::empty({B, S, Hq, D}, DType::f64), Tensor::empty({B, S, Hkv, D}, DType::f64),
        Tensor::empty({B, S, Hkv, D}, DType::f64), Tensor::empty({B, S, Hq, D}, DType::f64)};
  rng_normal(x.q, seed, 0);
  rng_normal(x.k, seed + 1, 0);
  rng_normal(x.v, seed + 2, 0);
  rng_normal(x.dout, seed + 3, 0);
  return x;
}

struct DenseResult {
  Tensor o, lse, dq, dk, dv;
};

// Softmax attention with `rule` as the mask, straight from the definition in f64.
inline DenseResult dense_attention(const Qkv& x, const Rule& rule) {
  const int64_t B = x.q.size(0), S = x.q.size(1), Hq = x.q.size(2), Hkv = x.k.size(2), D = x.q.size(3), G = Hq / Hkv;
  const auto q = x.q.to_vector(), k = x.k.to_vector(), v = x.v.to_vector(), dout = x.dout.to_vector();
  std::vector<double> o(q.size(), 0.0), lse(B * Hq * S), dq(q.size(), 0.0), dk(k.size(), 0.0), dv(k.size(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> p(S);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < S; ++i) {
        const int64_t qi = ((b * S + i) * Hq + h) * D;
        double m = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          p[j] = -INFINITY;
          if (!rule(i, j)) continue;
          const int64_t kj = ((b * S + j) * Hkv + h / G) * D;
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += q[qi + d] * k[kj + d];
          p[j] = s * scale;
          m = std::max(m, p[j]);
        }
        if (m == -INFINITY) {
          lse[(b * Hq + h) * S + i] = -INFINITY;
          continue;
        }
        double l = 0;
        for (int64_t j = 0; j < S; ++j) l += p[j] == -INFINITY ? 0.0 : std::exp(p[j] - m);
        for (int64_t j = 0; j < S; ++j) {
          p[j] = p[j] == -INFINITY ? 0.0 : std::exp(p[j] - m) / l;
          const int64_t kj = ((b * S + j) * Hkv + h / G) * D;
          for (int64_t d = 0; d < D; ++d) o[qi + d] += p[j] * v[kj + d];
        }
        lse[(b * Hq + h) * S + i] = m + std::log(l);
        double di = 0;
        for (int64_t d = 0; d < D; ++d) di += dout[qi + d] * o[qi + d];
        for (int64_t j = 0; j < S; ++j) {
          if (p[j] == 0.0) continue;
          const int64_t kj = ((b * S + j) * Hkv + h / G) * D;
          double dp = 0;
          for (int64_t d = 0; d < D; ++d) dp += dout[qi + d] * v[kj + d];
          const double ds = p[j] * (dp - di) * scale;
          for (int64_t d = 0; d < D; ++d) {
            dv[kj + d] += p[j] * dout[qi + d];
            dq[qi + d] += ds * k[kj + d];
            dk[kj + d] += ds * q[qi + d];
          }
        }
      }
  return {Tensor::from_vector(x.q.shape(), o, DType::f64), Tensor::from_vector({B, Hq, S}, lse, DType::f64),
          Tensor::from_vector(x.q.shape(), dq, DType::f64), Tensor::from_vector(x.k.shape(), dk, DType::f64),
          Tensor::from_vector(x.k.shape(), dv, DType::f64)};
}

}  // namespace lctx::test
