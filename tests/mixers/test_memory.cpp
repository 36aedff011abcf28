// The memory kind (mixers/memory.h) against a dense reference in f64, written loop by loop
// without flash, cross-attention runs, merges or pooling helpers: the sequence and the memory
// tokens through Wqkv (RoPE on the sequence, position 0 for the memory tokens), the compressed
// rows as block means of the rotated K and of V, then two plain softmaxes with explicit masks
//   local:   key j <= i with i - j < w
//   memory:  [memory tokens (all); compressed row c when (c + 1) b <= i]   (nothing: o = 0)
// fused per head and token by o = (1 - r) o_local + r o_memory (r the ratio, or
// sigmoid(x W_g^T + b_g)), y = o Wo^T. Run on 1, 3 and 4 simulated ranks, zigzag and contiguous
// (blocks then straddle segments and ranks). The cross-attention building block on its own
// (mixers/cross_attention.h): key rows at arbitrary non-decreasing positions (repeats, a query
// that sees none), against the same dense softmax, and its backward against central differences.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <mutex>

#include "common/check.h"
#include "dist/dist_test.h"
#include "mixers/conformance.h"
#include "mixers/cross_attention.h"
#include "mixers/dense_attention.h"

using namespace lctx;
using namespace lctx::test;

namespace {

struct MemCase {
  std::string name;
  int64_t window = 1, tokens = 0, block = 1;
  bool gate = false;
  double ratio = 0.5;
  bool rope = true;
};

void PrintTo(const MemCase& c, std::ostream* os) { *os << c.name; }

using namespace lctx::test::dense;

struct Dims {
  int64_t S, D, H, Hk, hd;
};

struct Weights {
  Vec wqkv, wo, tokens, w_gate, gate_bias;
};

// The dense reference y [B, S, D].
Vec dense_reference(const MemCase& c, const Dims& d, int64_t B, const Vec& x, const Weights& w) {
  const int64_t M = c.tokens, nb = d.S / c.block;
  const Qkv mem = M > 0 ? project(w.tokens, M, w.wqkv, d) : Qkv{};
  Vec y;
  for (int64_t bi = 0; bi < B; ++bi) {
    const Vec xb(x.begin() + bi * d.S * d.D, x.begin() + (bi + 1) * d.S * d.D);
    Qkv s = project(xb, d.S, w.wqkv, d);
    if (c.rope) {
      s.q = rope(s.q, d.S, d.H, d.hd);
      s.k = rope(s.k, d.S, d.Hk, d.hd);
    }
    const Vec local = attend(s.q, s.k, s.v, d.S, d.S, d, [&](int64_t i, int64_t j) { return j <= i && i - j < c.window; });
    const Vec memory = attend(s.q, concat(mem.k, block_means(s.k, c.block, d)), concat(mem.v, block_means(s.v, c.block, d)),
                              d.S, M + nb, d, [&](int64_t i, int64_t j) { return j < M || (j - M + 1) * c.block <= i; });
    const Vec logits = c.gate ? matmul_t(xb, w.w_gate, d.S, d.D, d.H) : Vec{};
    Vec o(local.size());
    for (int64_t i = 0; i < d.S; ++i)
      for (int64_t h = 0; h < d.H; ++h) {
        const double r = c.gate ? 1.0 / (1.0 + std::exp(-(logits[i * d.H + h] + w.gate_bias[h]))) : c.ratio;
        for (int64_t e = 0; e < d.hd; ++e) {
          const int64_t k = (i * d.H + h) * d.hd + e;
          o[k] = (1 - r) * local[k] + r * memory[k];
        }
      }
    const Vec yb = matmul_t(o, w.wo, d.S, d.H * d.hd, d.D);
    y.insert(y.end(), yb.begin(), yb.end());
  }
  return y;
}

class MemoryDense : public ::testing::TestWithParam<MemCase> {};

TEST_P(MemoryDense, EqualsDenseMaskedReference) {
  LCTX_SIM_ONLY();
  const MemCase& c = GetParam();
  const MixerShape s;
  const KindCase kc{c.name,
                    "memory",
                    {"mixer.memory.window=" + std::to_string(c.window),
                     "mixer.memory.memory_tokens=" + std::to_string(c.tokens),
                     "mixer.memory.block=" + std::to_string(c.block),
                     std::string("mixer.memory.fusion=") + (c.gate ? "gate" : "ratio"),
                     "mixer.memory.fusion_ratio=" + std::to_string(c.ratio),
                     std::string("model.position=") + (c.rope ? "rope" : "none")}};
  const train::Config one = case_config(kc, s, 1, 1, "zigzag");
  const Dims d{s.seq, s.dim, s.heads, s.kv_heads, one.model.head_size()};
  // The parameters every run starts from (ParamTable's seeded init), by name, with a non-zero
  // gate bias (it starts at 0) so that the test sees it.
  Weights w;
  Tensor params;
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, s.seq, 1, 1);
    auto b = build(one, mesh, layout, Device::cpu(), DType::f64, DType::f64);
    for (const mixers::Param& p : b->table.params()) {
      Tensor m = p.master;
      if (p.name == "gate_bias")
        for (int64_t h = 0; h < m.numel(); ++h) m.slice(0, h, h + 1).fill(0.3 * static_cast<double>(h) - 0.5);
      const Vec v = m.to_vector();
      if (p.name == "wqkv") w.wqkv = v;
      if (p.name == "wo") w.wo = v;
      if (p.name == "memory_tokens") w.tokens = v;
      if (p.name == "w_gate") w.w_gate = v;
      if (p.name == "gate_bias") w.gate_bias = v;
    }
    params = b->table.flat_params().clone();
  });
  ASSERT_EQ(w.tokens.size(), static_cast<size_t>(c.tokens * s.dim));
  ASSERT_EQ(w.w_gate.size(), static_cast<size_t>(c.gate ? s.heads * s.dim : 0));
  const Tensor x = random_tokens(s, 41), dy = random_tokens(s, 42);
  const Tensor want = Tensor::from_vector(x.shape(), dense_reference(c, d, s.batch, x.to_vector(), w), DType::f64);
  for (int n : {1, 3, 4})
    for (const char* layout : {"zigzag", "contiguous"}) {
      const train::Config cfg = case_config(kc, s, n, 1, layout);
      Out got;
      std::mutex mu;
      SpRun run;
      run.params = params;
      dist::run_simulated(n, [&](dist::Comm& comm) {
        Out o = run_sequence_parallel(cfg, comm, x, dy, run);
        std::lock_guard<std::mutex> lock(mu);
        if (comm.rank() == 0) got = o;
      });
      EXPECT_LE(rel_error(got.y, want), 1e-12) << c.name << " n=" << n << " " << layout;
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, MemoryDense,
                         ::testing::Values(MemCase{"ratio", 5, 3, 4, false, 0.5, true},
                                           MemCase{"gate", 9, 2, 7, true, 0.5, true},
                                           MemCase{"no_tokens", 1, 0, 13, false, 0.3, false},
                                           MemCase{"memory_only_tokens", 3, 1, 48, false, 1.0, true},
                                           MemCase{"window_only_b1", 6, 0, 1, false, 0.0, true},
                                           MemCase{"b1_tokens", 2, 2, 1, true, 0.5, false}),
                         [](const auto& info) { return info.param.name; });

// Queries at positions q_pos over key rows at k_pos (k_pos[j] <= q_pos[i] visible), or all.
struct CrossCase {
  std::vector<int64_t> q_pos, k_pos;
};

Tensor random_f64(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0);
  return t;
}

TEST(CrossAttention, MatchesDenseAndFiniteDifferences) {
  const Dims d{0, 0, 4, 2, 3};
  const int64_t B = 2;
  const auto range = [](int64_t lo, int64_t hi) {
    std::vector<int64_t> r;
    for (int64_t p = lo; p < hi; ++p) r.push_back(p);
    return r;
  };
  const auto cat = [](std::vector<int64_t> a, const std::vector<int64_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  // Query positions in any order (a zigzag-like shard); key positions with repeats; the query
  // at position 0 sees nothing; no positions: every row visible. Then block memory (row c at
  // (c + 1) b - 1), which takes the stepped causal calls: blocks of 3 over two segments of
  // whole blocks (the later first), blocks of 1 (plain causal), and fewer rows than the
  // queries' blocks (the last queries see them all).
  for (const CrossCase& c : {CrossCase{{5, 6, 7, 8, 0, 1, 2, 3, 4}, {1, 1, 3, 4, 4, 8}}, CrossCase{{}, {}},
                             CrossCase{cat(range(9, 18), range(0, 9)), {2, 5, 8, 11, 14, 17}},
                             CrossCase{range(0, 7), range(0, 7)}, CrossCase{range(0, 12), {1, 3, 5}}}) {
    const int64_t L = c.q_pos.empty() ? 9 : static_cast<int64_t>(c.q_pos.size());
    const int64_t N = c.k_pos.empty() ? 6 : static_cast<int64_t>(c.k_pos.size());
    const std::string what = c.k_pos.empty() ? "no positions" : "positions of " + std::to_string(N) + " rows";
    const Tensor q = random_f64({B, L, d.H, d.hd}, 71), k = random_f64({B, N, d.Hk, d.hd}, 72),
                 v = random_f64({B, N, d.Hk, d.hd}, 73), w = random_f64({B, L, d.H, d.hd}, 74);
    const auto visible = [&](int64_t i, int64_t j) {
      return c.k_pos.empty() || c.k_pos[static_cast<size_t>(j)] <= c.q_pos[static_cast<size_t>(i)];
    };
    const attn::FlashOutput out = mixers::cross_attention_forward(q, c.q_pos, k, v, c.k_pos, {});
    Vec want;
    for (int64_t b = 0; b < B; ++b) {
      const auto rows = [b](const Tensor& t) { return t.slice(0, b, b + 1).contiguous().to_vector(); };
      const Vec ob = attend(rows(q), rows(k), rows(v), L, N, d, visible);
      want.insert(want.end(), ob.begin(), ob.end());
    }
    EXPECT_LE(rel_error(out.o, Tensor::from_vector(q.shape(), want, DType::f64)), 1e-13) << what;
    for (int64_t i = 0; i < L && !c.k_pos.empty(); ++i) {  // a query that sees nothing: lse -inf
      if (c.k_pos[0] > c.q_pos[static_cast<size_t>(i)]) {
        EXPECT_TRUE(std::isinf(out.lse.slice(2, i, i + 1).to_vector()[0])) << what << " row " << i;
      }
    }
    // d<o, w>: the backward of dout = w, against central differences in one random direction.
    const Tensor dq = Tensor::zeros(q.shape(), DType::f64), dk = Tensor::zeros(k.shape(), DType::f64),
                 dv = Tensor::zeros(k.shape(), DType::f64);
    mixers::cross_attention_backward(q, c.q_pos, k, v, c.k_pos, out.o, out.lse, w, {}, {dq, dk, dv});
    const auto dot = [](const Tensor& a, const Tensor& b) {
      const Vec va = a.to_vector(), vb = b.to_vector();
      double s = 0;
      for (size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
      return s;
    };
    const Tensor tq = random_f64(q.shape(), 81), tk = random_f64(k.shape(), 82), tv = random_f64(k.shape(), 83);
    const double analytic = dot(dq, tq) + dot(dk, tk) + dot(dv, tv), eps = 1e-6;
    const auto loss = [&](double sgn) {
      const auto shift = [&](const Tensor& x, const Tensor& t) {
        Vec vx = x.to_vector();
        const Vec vt = t.to_vector();
        for (size_t i = 0; i < vx.size(); ++i) vx[i] += sgn * eps * vt[i];
        return Tensor::from_vector(x.shape(), vx, DType::f64);
      };
      return dot(mixers::cross_attention_forward(shift(q, tq), c.q_pos, shift(k, tk), shift(v, tv), c.k_pos, {}).o, w);
    };
    EXPECT_NEAR((loss(1) - loss(-1)) / (2 * eps), analytic, 1e-7 * std::max(1.0, std::abs(analytic))) << what;
    for (const Tensor* g : {&dq, &dk, &dv})
      for (double x : g->to_vector()) ASSERT_TRUE(std::isfinite(x)) << what;
  }
}

}  // namespace
