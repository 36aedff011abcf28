// The nsa kind (mixers/nsa.h) against a dense reference in f64, written loop by loop without
// flash, cross-attention runs, block lists, gathers or merges: the sequence through Wqkv (RoPE
// optional), the compressed rows as block means of the rotated K and of V, the compressed
// softmax's probabilities p(i, h, c) written out, the selection made from them here (scores by
// overlap, block 0 and the local block forced, ties to the lower index), then three plain
// softmaxes with explicit per-head masks
//   compressed:  row c when (c + 1) b_c - 1 <= i
//   selected:    key j <= i whose block j / b_s the query block i / b_s picked for h's KV head
//   window:      key j <= i with i - j < w
// mixed by sigmoid(x W_g^T + b_g) (rows: compressed, selected, window) and y = o Wo^T.
// Block sizes > 1 here (the conformance suite runs select_block 1, the only size that fits all
// of its layouts): sequences of 96 and 144 tokens whose segments b_s divides on 1, 2, 3, 4 and 8
// simulated ranks, zigzag and contiguous, each equal to the reference (y) and to one rank (y, dx,
// parameter gradients). The backward against central differences with the selection frozen: the
// reference's selection is checked unchanged at both perturbed points. `compress: mlp` cases: the
// compressed rows are NSA's learned MLP written out here (W2 gelu(W1 concat(rows + pos) + b1) + b2
// per block, KV head, K and V) with non-zero biases, b_c dividing every segment of the sweep.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "common/check.h"
#include "common/expect_error.h"
#include "dist/dist_test.h"
#include "mixers/conformance.h"
#include "mixers/dense_attention.h"
#include "mixers/nsa.h"
#include "mixers/nsa_scores.h"

using namespace lctx;
using namespace lctx::test;
using namespace lctx::test::dense;

namespace {

struct NsaCase {
  std::string name;
  int64_t seq = 0, window = 1, compress = 1, select = 1, top_n = 2;
  bool rope = true;
  int64_t mlp_hidden = 0;  // > 0: compress: mlp with this hidden width
};

void PrintTo(const NsaCase& c, std::ostream* os) { *os << c.name; }

struct Dims {
  int64_t S, D, H, Hk, hd;
};

// The parameters by name, in table order (wqkv, wo, w_gate, gate_bias, then with compress: mlp
// cmp_{k,v}_{pos, w1, b1, w2, b2}).
struct Weights {
  std::vector<std::pair<std::string, Vec>> p;
  const Vec& operator[](const std::string& name) const {
    for (const auto& [n, v] : p)
      if (n == name) return v;
    throw std::runtime_error("no parameter " + name);
  }
};

// NSA's compressed rows of rows [S, Hk, hd] by the MLP cmp_<kv>_*: [S / b, Hk, hd].
Vec block_mlp(const Vec& rows, int64_t b, const Dims& d, const Weights& w, const std::string& kv) {
  const Vec &pos = w["cmp_" + kv + "_pos"], &w1 = w["cmp_" + kv + "_w1"], &b1 = w["cmp_" + kv + "_b1"],
            &w2 = w["cmp_" + kv + "_w2"], &b2 = w["cmp_" + kv + "_b2"];
  const int64_t n = d.S / b, hidden = static_cast<int64_t>(b1.size());
  Vec out(static_cast<size_t>(n * d.Hk * d.hd));
  for (int64_t c = 0; c < n; ++c)
    for (int64_t kh = 0; kh < d.Hk; ++kh) {
      Vec h(static_cast<size_t>(hidden));
      for (int64_t u = 0; u < hidden; ++u) {
        double z = b1[u];
        for (int64_t t = 0; t < b; ++t)
          for (int64_t e = 0; e < d.hd; ++e)
            z += w1[(u * b + t) * d.hd + e] * (rows[((c * b + t) * d.Hk + kh) * d.hd + e] + pos[t * d.hd + e]);
        h[u] = 0.5 * z * (1 + std::tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)));
      }
      for (int64_t e = 0; e < d.hd; ++e) {
        double y = b2[e];
        for (int64_t u = 0; u < hidden; ++u) y += w2[e * hidden + u] * h[u];
        out[(c * d.Hk + kh) * d.hd + e] = y;
      }
    }
  return out;
}

// The scaled score of query row i, head h against key row j of h's KV head.
double score(const Vec& q, const Vec& k, int64_t i, int64_t h, int64_t j, const Dims& d) {
  const int64_t kh = h / (d.H / d.Hk);
  double dot = 0;
  for (int64_t e = 0; e < d.hd; ++e) dot += q[(i * d.H + h) * d.hd + e] * k[(j * d.Hk + kh) * d.hd + e];
  return dot / std::sqrt(static_cast<double>(d.hd));
}

// Softmax attention with a per-head mask visible(i, h, j); 0 for a query that sees none.
Vec attend_heads(const Vec& q, const Vec& k, const Vec& v, int64_t Nq, int64_t Nk, const Dims& d,
                 const std::function<bool(int64_t, int64_t, int64_t)>& visible) {
  Vec o(static_cast<size_t>(Nq * d.H * d.hd), 0.0);
  for (int64_t i = 0; i < Nq; ++i)
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t kh = h / (d.H / d.Hk);
      double mx = -std::numeric_limits<double>::infinity(), sum = 0;
      for (int64_t j = 0; j < Nk; ++j)
        if (visible(i, h, j)) mx = std::max(mx, score(q, k, i, h, j, d));
      for (int64_t j = 0; j < Nk; ++j)
        if (visible(i, h, j)) sum += std::exp(score(q, k, i, h, j, d) - mx);
      for (int64_t j = 0; j < Nk; ++j) {
        if (!visible(i, h, j)) continue;
        const double p = std::exp(score(q, k, i, h, j, d) - mx) / sum;
        for (int64_t e = 0; e < d.hd; ++e) o[(i * d.H + h) * d.hd + e] += p * v[(j * d.Hk + kh) * d.hd + e];
      }
    }
  return o;
}

// picked[(b Hk + kh) T + t][j]: query block t picked key block j for KV head kh of batch row b.
using Selection = std::vector<std::vector<bool>>;

struct Reference {
  Vec y;          // [B, S, D]
  Selection sel;  // every query block's picks
};

Reference dense_reference(const NsaCase& c, const Dims& d, int64_t B, const Vec& x, const Weights& w) {
  const int64_t bc = c.compress, bs = c.select, Nc = d.S / bc, T = d.S / bs, G = d.H / d.Hk;
  Reference ref;
  for (int64_t bi = 0; bi < B; ++bi) {
    const Vec xb(x.begin() + bi * d.S * d.D, x.begin() + (bi + 1) * d.S * d.D);
    Qkv s = project(xb, d.S, w["wqkv"], d);
    if (c.rope) {
      s.q = rope(s.q, d.S, d.H, d.hd);
      s.k = rope(s.k, d.S, d.Hk, d.hd);
    }
    const Vec ck = c.mlp_hidden > 0 ? block_mlp(s.k, bc, d, w, "k") : block_means(s.k, bc, d);
    const Vec cv = c.mlp_hidden > 0 ? block_mlp(s.v, bc, d, w, "v") : block_means(s.v, bc, d);
    const auto cmp_visible = [&](int64_t i, int64_t c0) { return (c0 + 1) * bc - 1 <= i; };
    // The compressed probabilities p(i, h, c), then the scores of each query block's key blocks.
    for (int64_t kh = 0; kh < d.Hk; ++kh)
      for (int64_t t = 0; t < T; ++t) {
        Vec sc(static_cast<size_t>(T), 0.0);
        for (int64_t i = t * bs; i < (t + 1) * bs; ++i)
          for (int64_t h = kh * G; h < (kh + 1) * G; ++h) {
            double mx = -std::numeric_limits<double>::infinity(), sum = 0;
            for (int64_t c0 = 0; c0 < Nc; ++c0)
              if (cmp_visible(i, c0)) mx = std::max(mx, score(s.q, ck, i, h, c0, d));
            for (int64_t c0 = 0; c0 < Nc; ++c0)
              if (cmp_visible(i, c0)) sum += std::exp(score(s.q, ck, i, h, c0, d) - mx);
            for (int64_t c0 = 0; c0 < Nc; ++c0) {
              if (!cmp_visible(i, c0)) continue;
              const double p = std::exp(score(s.q, ck, i, h, c0, d) - mx) / sum;
              for (int64_t j = 0; j < T; ++j) {
                const int64_t overlap = std::min((c0 + 1) * bc, (j + 1) * bs) - std::max(c0 * bc, j * bs);
                if (overlap > 0)
                  sc[static_cast<size_t>(j)] += p * static_cast<double>(overlap) / static_cast<double>(bc);
              }
            }
          }
        std::vector<bool> picked(static_cast<size_t>(T), false);
        picked[0] = picked[static_cast<size_t>(t)] = true;
        int64_t have = t == 0 ? 1 : 2;
        while (have < std::min(c.top_n, t + 1)) {  // the best unpicked block before t, lowest index on ties
          int64_t best = -1;
          for (int64_t j = 1; j < t; ++j)
            if (!picked[static_cast<size_t>(j)] &&
                (best < 0 || sc[static_cast<size_t>(j)] > sc[static_cast<size_t>(best)]))
              best = j;
          picked[static_cast<size_t>(best)] = true;
          ++have;
        }
        ref.sel.push_back(picked);
      }
    const Selection& sel = ref.sel;
    const auto picks = [&](int64_t i, int64_t h, int64_t j) {
      return sel[static_cast<size_t>((bi * d.Hk + h / G) * T + i / bs)][static_cast<size_t>(j / bs)];
    };
    const Vec o_c =
        attend_heads(s.q, ck, cv, d.S, Nc, d, [&](int64_t i, int64_t, int64_t c0) { return cmp_visible(i, c0); });
    const Vec o_s = attend_heads(s.q, s.k, s.v, d.S, d.S, d,
                                 [&](int64_t i, int64_t h, int64_t j) { return j <= i && picks(i, h, j); });
    const Vec o_w =
        attend(s.q, s.k, s.v, d.S, d.S, d, [&](int64_t i, int64_t j) { return j <= i && i - j < c.window; });
    const Vec logits = matmul_t(xb, w["w_gate"], d.S, d.D, 3 * d.H);
    Vec o(o_w.size());
    for (int64_t i = 0; i < d.S; ++i)
      for (int64_t h = 0; h < d.H; ++h) {
        double g[3];
        for (int t = 0; t < 3; ++t)
          g[t] = 1.0 / (1.0 + std::exp(-(logits[i * 3 * d.H + t * d.H + h] + w["gate_bias"][t * d.H + h])));
        for (int64_t e = 0; e < d.hd; ++e) {
          const int64_t k = (i * d.H + h) * d.hd + e;
          o[k] = g[0] * o_c[k] + g[1] * o_s[k] + g[2] * o_w[k];
        }
      }
    const Vec yb = matmul_t(o, w["wo"], d.S, d.H * d.hd, d.D);
    ref.y.insert(ref.y.end(), yb.begin(), yb.end());
  }
  return ref;
}

KindCase kind_case(const NsaCase& c) {
  KindCase k{c.name,
             "nsa",
             {"mixer.nsa.window=" + std::to_string(c.window), "mixer.nsa.compress_block=" + std::to_string(c.compress),
              "mixer.nsa.select_block=" + std::to_string(c.select), "mixer.nsa.top_n=" + std::to_string(c.top_n),
              std::string("model.position=") + (c.rope ? "rope" : "none")}};
  if (c.mlp_hidden > 0) {
    k.overrides.push_back("mixer.nsa.compress=mlp");
    k.overrides.push_back("mixer.nsa.compress_hidden=" + std::to_string(c.mlp_hidden));
  }
  return k;
}

// The parameters every run starts from (ParamTable's seeded init) with non-zero biases (the gate's
// and the compression MLP's start at 0) so that the test sees them: the flat table and the
// reference's weights.
std::pair<Tensor, Weights> initial(const train::Config& one, int64_t seq) {
  Weights w;
  Tensor params;
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, seq, 1, 1);
    auto b = build(one, mesh, layout, Device::cpu(), DType::f64, DType::f64);
    for (const mixers::Param& p : b->table.params()) {
      Tensor m = p.master;
      const bool bias = p.name == "gate_bias" || p.name.ends_with("_b1") || p.name.ends_with("_b2");
      if (bias)
        for (int64_t h = 0; h < m.numel(); ++h) m.slice(0, h, h + 1).fill(0.4 * static_cast<double>(h % 5) - 0.8);
      w.p.push_back({p.name, m.to_vector()});
    }
    params = b->table.flat_params().clone();
  });
  return {params, w};
}

Out on_ranks(const train::Config& cfg, int n, const Tensor& x, const Tensor& dy, const Tensor& params,
            DType compute = DType::f64) {
  Out got;
  std::mutex mu;
  SpRun run;
  run.params = params;
  run.master = run.compute = compute;
  dist::run_simulated(n, [&](dist::Comm& comm) {
    Out o = run_sequence_parallel(cfg, comm, x, dy, run);
    std::lock_guard<std::mutex> lock(mu);
    if (comm.rank() == 0) got = o;
  });
  return got;
}

class NsaDense : public ::testing::TestWithParam<NsaCase> {};

TEST_P(NsaDense, EqualsDenseReferenceOnEveryLayout) {
  LCTX_SIM_ONLY();
  const NsaCase& c = GetParam();
  MixerShape s;
  s.seq = c.seq;
  const KindCase kc = kind_case(c);
  const train::Config one = case_config(kc, s, 1, 1, "zigzag");
  const Dims d{s.seq, s.dim, s.heads, s.kv_heads, one.model.head_size()};
  const auto [params, w] = initial(one, s.seq);
  const Tensor x = random_tokens(s, 41), dy = random_tokens(s, 42);
  const Reference ref = dense_reference(c, d, s.batch, x.to_vector(), w);
  const Tensor want = Tensor::from_vector(x.shape(), ref.y, DType::f64);
  // The case exercises the selection: some query block has more candidates than picks.
  EXPECT_LT(c.top_n, s.seq / c.select) << c.name;
  const Out base = on_ranks(one, 1, x, dy, params);
  EXPECT_LE(rel_error(base.y, want), 1e-12) << c.name;
  for (int n : {2, 3, 4, 8})
    for (const char* layout : {"zigzag", "contiguous"}) {
      const train::Config cfg = case_config(kc, s, n, 1, layout);
      const Out got = on_ranks(cfg, n, x, dy, params);
      const std::string what = c.name + " n=" + std::to_string(n) + " " + layout;
      EXPECT_LE(rel_error(got.y, want), 1e-12) << what;
      EXPECT_LE(rel_error(got.dx, base.dx), 1e-12) << what;
      EXPECT_LE(rel_error(got.grads, base.grads), 1e-12) << what;
    }
  // f32 (master and compute): the same selection, f32 rounding.
  for (int n : {1, 4}) {
    const Out f32 = on_ranks(case_config(kc, s, n, 1, "zigzag"), n, x, dy, params, DType::f32);
    EXPECT_LE(rel_error(f32.y, want), 1e-5) << c.name << " f32 n=" << n;
  }
}

double dot(const Tensor& a, const Tensor& b) {
  const Vec va = a.to_vector(), vb = b.to_vector();
  double r = 0;
  for (size_t i = 0; i < va.size(); ++i) r += va[i] * vb[i];
  return r;
}

// loss = <y, w>; its gradient is the backward of dy = w. Central differences in random
// directions of the inputs and every parameter, at points where the selection is the same.
TEST_P(NsaDense, BackwardMatchesFiniteDifferencesWithSelectionFrozen) {
  LCTX_SIM_ONLY();
  const NsaCase& c = GetParam();
  MixerShape s;
  s.seq = c.seq;
  const train::Config one = case_config(kind_case(c), s, 1, 1, "zigzag");
  const Dims d{s.seq, s.dim, s.heads, s.kv_heads, one.model.head_size()};
  const auto [p0, w0] = initial(one, s.seq);
  const Tensor x = random_tokens(s, 1), wy = random_tokens(s, 2);
  const Out base = on_ranks(one, 1, x, wy, p0);
  const double eps = 1e-5;
  for (uint64_t dir = 0; dir < 2; ++dir) {
    Tensor dxd = Tensor::empty(x.shape(), DType::f64), dpd = Tensor::empty(p0.shape(), DType::f64);
    rng_normal(dxd, 50 + dir, 0);
    rng_normal(dpd, 60 + dir, 0);
    const double analytic = dot(base.dx, dxd) + dot(base.grads, dpd);
    const Selection sel0 = dense_reference(c, d, s.batch, x.to_vector(), w0).sel;
    const auto shifted = [&](double sgn) {
      const auto add = [&](const Tensor& t, const Tensor& u) {
        Vec a = t.to_vector();
        const Vec b = u.to_vector();
        for (size_t i = 0; i < a.size(); ++i) a[i] += sgn * eps * b[i];
        return Tensor::from_vector(t.shape(), a, DType::f64);
      };
      const Tensor xs = add(x, dxd), ps = add(p0, dpd);
      // The reference's weights at the shifted parameters (the flat table in w0's order).
      Weights ws;
      const Vec pv = ps.to_vector();
      auto at = pv.begin();
      for (const auto& [name, v] : w0.p) {
        ws.p.push_back({name, Vec(at, at + static_cast<std::ptrdiff_t>(v.size()))});
        at += static_cast<std::ptrdiff_t>(v.size());
      }
      EXPECT_TRUE(at == pv.end()) << "the parameter table is not the initial weights' list";
      EXPECT_TRUE(dense_reference(c, d, s.batch, xs.to_vector(), ws).sel == sel0)
          << c.name << ": the perturbation flips the selection";
      return dot(on_ranks(one, 1, xs, wy, ps).y, wy);
    };
    const double numeric = (shifted(1) - shifted(-1)) / (2 * eps);
    EXPECT_NEAR(numeric, analytic, 1e-6 * std::max(1.0, std::abs(analytic))) << c.name << " direction " << dir;
  }
}

// compress: mlp built directly: compress_block must divide the segments, the hidden width be >= 1.
TEST(NsaMlp, BadOptionsAreNamed) {
  LCTX_SIM_ONLY();
  dist::run_simulated(2, [](dist::Comm& comm) {
    dist::Mesh mesh(comm, {.ring = 2});
    const dist::Layout layout(dist::LayoutKind::zigzag, 32, 2, 1);  // segments of 8
    for (const auto& [cb, hidden, needle] :
         {std::tuple{3, 8, "compress_block 3 must divide the layout's segments with compress: mlp"},
          std::tuple{4, 0, "compress_hidden 0 must be >= 1"}}) {
      mixers::NsaOptions o;
      o.core.shape = {16, 4, 2, 4};
      o.window = 8;
      o.compress_block = cb;
      o.compress = mixers::NsaCompress::mlp;
      o.compress_hidden = hidden;
      o.select_block = 4;
      o.top_n = 2;
      expect_error([&] { mixers::make_nsa_mixer(o, mesh, layout); }, {needle});
    }
  });
}

// seq 144: segments of 9 (zigzag, 8 ranks), 24 (zigzag, 3), 18, 36, 48, 72: b_s = 3 divides all;
// seq 96: segments of 6, 16, 12, 24, 32, 48: b_s = 2.
INSTANTIATE_TEST_SUITE_P(
    Cases, NsaDense,
    ::testing::Values(NsaCase{"cmp4_sel3", 144, 5, 4, 3, 5, true},       // b_c, b_s coprime: shares by overlap
                      NsaCase{"cmp6_sel2", 96, 3, 6, 2, 7, false},       // b_c = 3 b_s: one probability, three blocks
                      NsaCase{"cmp1_sel3", 144, 1, 1, 3, 4, true},       // b_s = 3 b_c: a block sums three rows
                      NsaCase{"cmp3_sel3_n2", 144, 144, 3, 3, 2, true},  // block 0 and the local block only
                      NsaCase{"cmp9_sel3_n20", 144, 2, 9, 3, 20, false},
                      // compress: mlp; b_c divides every segment (3 of 144, 2 of 96 tokens)
                      NsaCase{"mlp3_sel3", 144, 5, 3, 3, 5, true, 6},
                      NsaCase{"mlp2_sel2_n3", 96, 4, 2, 2, 3, false, 8},
                      NsaCase{"mlp1_sel3", 144, 1, 1, 3, 5, true, 4}),
    [](const auto& info) { return info.param.name; });

// The picks from given scores: block 0 and the own block always, then by score with ties to the
// lower block, ascending, -1 after; fewer blocks than top_n before the own block.
TEST(NsaPickBlocks, ByScoreTiesToTheLowerBlock) {
  const std::vector<double> scores = {
      9, 1, 5, 5, 2, 7, 0, 0,  // own 6: 0, 6, then 5 (7), 2 and 3 (tied 5; top_n 5)
      0, 0, 0, 0, 0, 0, 0, 0,  // own 7: all tied: 0, 7, then 1, 2, 3
      3, 3, 3, 3, 3, 3, 3, 3,  // own 0: block 0 alone
      1, 2, 0, 0, 0, 0, 0, 0,  // own 2: 0, 1, 2 (fewer than top_n)
  };
  const std::vector<int64_t> own = {6, 7, 0, 2};
  const std::vector<int64_t> got = mixers::nsa_pick_blocks(Tensor::from_vector({4, 8}, scores, DType::f64), own, 5);
  const std::vector<int64_t> want = {0, 2, 3, 5, 6, 0, 1, 2, 3, 7, 0, -1, -1, -1, -1, 0, 1, 2, -1, -1};
  EXPECT_EQ(got, want);
  const std::vector<int64_t> past_the_end = {6, 7, 8, 2};  // own block 8 of 8 blocks
  EXPECT_THROW(mixers::nsa_pick_blocks(Tensor::from_vector({4, 8}, scores, DType::f64), past_the_end, 5), Error);
  EXPECT_THROW(mixers::nsa_pick_blocks(Tensor::from_vector({4, 8}, scores, DType::f64), own, 1), Error);
}

}  // namespace
