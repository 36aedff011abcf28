// The local_global kind (mixers/local_global.h) against a dense masked reference in f64: the
// learned global tokens and the sequence through Wqkv (RoPE on the sequence, position 0 for the
// global tokens), then plain softmax attention of every query over [global tokens; sequence]
// with the kind's mask, written here loop by loop without flash or any merge:
//   causal:         key j of the sequence when j <= i and (i - j < w or j < p); every global token
//   bidirectional:  stage 1, each global query over [global tokens; every sequence token];
//                   h = global_tokens + o_g Wo^T; stage 2, each sequence query over
//                   [h Wk^T, h Wv^T; sequence tokens with |i - j| < w]
// y = o Wo^T. Run on 1 and 3 simulated ranks (zigzag and contiguous shards). With BigBird random
// key blocks, key j is also seen when its block is among those drawn for i's block
// (mixers::local_global_random_blocks, the draw the mixer uses), on 1, 2, 3, 4 and 8 ranks where
// the block size fits the layout, each run's dx and gradients equal to one rank's, and at
// another training step (begin_step). The draw itself: blocks disjoint from every other part.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <mutex>

#include "common/check.h"
#include "common/gradcheck.h"
#include "dist/dist_test.h"
#include "mixers/conformance.h"
#include "mixers/dense_attention.h"
#include "mixers/local_global.h"

using namespace lctx;
using namespace lctx::test;

namespace {

struct LgCase {
  std::string name;
  bool causal = true;
  int64_t window = 1, globals = 0, first = 0;
  bool rope = true;
  int64_t random = 0, block = 1, seed = 0;  // random key blocks per query block, their size, seed
};

mixers::LocalGlobalOptions draw_options(const LgCase& c) {
  mixers::LocalGlobalOptions o;
  o.form = c.causal ? mixers::LocalGlobalForm::causal : mixers::LocalGlobalForm::bidirectional;
  o.window = c.window;
  o.first_tokens = c.first;
  o.random_blocks = c.random;
  o.random_block_size = c.block;
  o.random_seed = static_cast<uint64_t>(c.seed);
  return o;
}

using namespace lctx::test::dense;

struct Dims {
  int64_t B, S, D, H, Hk, hd, g;
};

// The dense reference y [B, S, D] of one case.
Vec dense_reference(const LgCase& c, const Dims& d, const Vec& x, const Vec& wqkv, const Vec& wo, const Vec& e,
                    int64_t step = 0) {
  Vec y;
  const int64_t g = d.g;
  const std::vector<int32_t> drawn = mixers::local_global_random_blocks(draw_options(c), d.S, step);
  const auto random = [&](int64_t i, int64_t j) {
    for (int64_t t = 0; t < c.random; ++t)
      if (drawn[static_cast<size_t>(i / c.block * c.random + t)] == j / c.block) return true;
    return false;
  };
  const Qkv ge = g > 0 ? project(e, g, wqkv, d) : Qkv{};
  for (int64_t b = 0; b < d.B; ++b) {
    const Vec xb(x.begin() + b * d.S * d.D, x.begin() + (b + 1) * d.S * d.D);
    Qkv s = project(xb, d.S, wqkv, d);
    if (c.rope) {
      s.q = rope(s.q, d.S, d.H, d.hd);
      s.k = rope(s.k, d.S, d.Hk, d.hd);
    }
    Vec gk = ge.k, gv = ge.v;
    std::function<bool(int64_t, int64_t)> visible;
    if (c.causal) {
      visible = [&](int64_t i, int64_t j) {
        if (j < g) return true;
        j -= g;
        return j <= i && (i - j < c.window || j < c.first || random(i, j));
      };
    } else {
      if (g > 0) {
        const Vec og = attend(ge.q, concat(ge.k, s.k), concat(ge.v, s.v), g, g + d.S, d,
                              [](int64_t, int64_t) { return true; });
        Vec h = matmul_t(og, wo, g, d.H * d.hd, d.D);
        for (size_t i = 0; i < h.size(); ++i) h[i] += e[i];
        const Qkv hk = project(h, g, wqkv, d);
        gk = hk.k;
        gv = hk.v;
      }
      visible = [&](int64_t i, int64_t j) {
        return j < g || std::abs(i - (j - g)) < c.window || random(i, j - g);
      };
    }
    const Vec o = attend(s.q, concat(gk, s.k), concat(gv, s.v), d.S, g + d.S, d, visible);
    const Vec yb = matmul_t(o, wo, d.S, d.H * d.hd, d.D);
    y.insert(y.end(), yb.begin(), yb.end());
  }
  return y;
}

void PrintTo(const LgCase& c, std::ostream* os) { *os << c.name; }

class LocalGlobalDense : public ::testing::TestWithParam<LgCase> {};

TEST_P(LocalGlobalDense, EqualsDenseMaskedReference) {
  LCTX_SIM_ONLY();
  const LgCase& c = GetParam();
  const MixerShape s;
  const KindCase kc{c.name,
                    "local_global",
                    {"mixer.local_global.window=" + std::to_string(c.window),
                     "mixer.local_global.global_tokens=" + std::to_string(c.globals),
                     "mixer.local_global.first_tokens=" + std::to_string(c.first),
                     std::string("mixer.local_global.causal=") + (c.causal ? "true" : "false"),
                     std::string("model.position=") + (c.rope ? "rope" : "none"),
                     "mixer.local_global.random_blocks=" + std::to_string(c.random),
                     "mixer.local_global.random_block_size=" + std::to_string(c.block),
                     "mixer.local_global.random_seed=" + std::to_string(c.seed)}};
  const train::Config one = case_config(kc, s, 1, 1, "zigzag");
  const Dims d{s.batch, s.seq, s.dim, s.heads, s.kv_heads, one.model.head_size(), c.globals};
  // The parameters every run starts from (ParamTable's seeded init), by name.
  Vec wqkv, wo, e;
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, s.seq, 1, 1);
    auto b = build(one, mesh, layout, Device::cpu(), DType::f64, DType::f64);
    for (const mixers::Param& p : b->table.params()) {
      if (p.name == "wqkv") wqkv = p.master.to_vector();
      if (p.name == "wo") wo = p.master.to_vector();
      if (p.name == "global_tokens") e = p.master.to_vector();
    }
  });
  ASSERT_EQ(e.size(), static_cast<size_t>(c.globals * s.dim));
  const Tensor x = random_tokens(s, 31), dy = random_tokens(s, 32);
  const Tensor want = Tensor::from_vector(x.shape(), dense_reference(c, d, x.to_vector(), wqkv, wo, e), DType::f64);
  const std::vector<int> ranks = c.random > 0 ? std::vector<int>{1, 2, 3, 4, 8} : std::vector<int>{1, 3};
  Out first;
  int runs = 0;
  for (int n : ranks)
    for (const char* layout : {"zigzag", "contiguous"}) {
      train::Config cfg;
      try {
        cfg = case_config(kc, s, n, 1, layout);
      } catch (const Error&) {
        ASSERT_GT(c.random, 0) << c.name << " n=" << n << " " << layout;
        continue;  // random_block_size does not divide this layout's segments
      }
      Out got;
      std::mutex mu;
      dist::run_simulated(n, [&](dist::Comm& comm) {
        Out o = run_sequence_parallel(cfg, comm, x, dy);
        std::lock_guard<std::mutex> lock(mu);
        if (comm.rank() == 0) got = o;
      });
      const std::string what = c.name + " n=" + std::to_string(n) + " " + layout;
      EXPECT_LE(rel_error(got.y, want), 1e-12) << what;
      if (runs++ == 0) {
        first = got;
      } else {
        EXPECT_LE(rel_error(got.dx, first.dx), 1e-12) << what;
        EXPECT_LE(rel_error(got.grads, first.grads), 1e-12) << what;
      }
    }
  EXPECT_GE(runs, 4) << c.name;
  if (c.random == 0) return;
  // Another step draws other blocks: the mixer after begin_step(3) equals the reference with step 3's draw.
  const Tensor want3 =
      Tensor::from_vector(x.shape(), dense_reference(c, d, x.to_vector(), wqkv, wo, e, 3), DType::f64);
  EXPECT_GT(rel_error(want3, want), 1e-6) << c.name << ": the draw did not change with the step";
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, s.seq, 1, 1);
    auto b = build(one, mesh, layout, Device::cpu(), DType::f64, DType::f64);
    b->mixer->begin_step(3);
    const Out o = run_mixer(*b, x, rank_tokens(one, layout, 0, s.batch, Device::cpu()), dy);
    EXPECT_LE(rel_error(o.y, want3), 1e-12) << c.name << " step 3";
  });
}

INSTANTIATE_TEST_SUITE_P(
    Cases, LocalGlobalDense,
    ::testing::Values(LgCase{"causal_sinks", true, 5, 3, 0, true}, LgCase{"causal_first", true, 4, 0, 7, false},
                      LgCase{"causal_sinks_first", true, 6, 2, 10, true}, LgCase{"causal_w1", true, 1, 1, 3, true},
                      LgCase{"causal_window_only", true, 9, 0, 0, true},
                      LgCase{"bidirectional", false, 5, 3, 0, true},
                      LgCase{"bidirectional_whole", false, 48, 2, 0, false},
                      LgCase{"bidirectional_window_only", false, 3, 0, 0, true},
                      LgCase{"causal_random", true, 5, 2, 7, true, 2, 3, 1},
                      LgCase{"causal_random_window_only", true, 4, 0, 0, false, 3, 2, 5},
                      LgCase{"causal_random_more_than_candidates", true, 6, 1, 3, true, 9, 3, 2},
                      LgCase{"bidirectional_random", false, 5, 3, 0, true, 2, 3, 4},
                      LgCase{"bidirectional_random_window_only", false, 7, 0, 0, true, 3, 2, 0}),
    [](const auto& info) { return info.param.name; });

// dx of random blocks larger than one position (the conformance suite's variants use blocks of 1,
// which every layout fits) against central differences of <y, dy>, on one rank.
TEST(LocalGlobalRandomBlocks, GradcheckInputs) {
  LCTX_SIM_ONLY();
  const MixerShape s{.batch = 2, .seq = 24, .dim = 8, .heads = 2, .kv_heads = 1, .head_dim = 0};
  for (const bool causal : {true, false}) {
    const KindCase kc{"grad", "local_global",
                      {"mixer.local_global.window=4", "mixer.local_global.global_tokens=2",
                       std::string("mixer.local_global.first_tokens=") + (causal ? "3" : "0"),
                       std::string("mixer.local_global.causal=") + (causal ? "true" : "false"),
                       "mixer.local_global.random_blocks=2", "mixer.local_global.random_block_size=3"}};
    const train::Config cfg = case_config(kc, s, 1, 1, "zigzag");
    dist::run_simulated(1, [&](dist::Comm& comm) {
      dist::Mesh mesh(comm, {});
      const dist::Layout layout(dist::LayoutKind::zigzag, s.seq, 1, 1);
      auto b = build(cfg, mesh, layout, Device::cpu(), DType::f64, DType::f64);
      const mixers::Tokens seq = rank_tokens(cfg, layout, 0, s.batch, Device::cpu());
      Tensor x = random_tokens(s, 41);
      const Tensor dy = random_tokens(s, 42);
      const Out o = run_mixer(*b, x, seq, dy);
      const auto loss = [&] {
        std::unique_ptr<mixers::Saved> saved;
        mixers::Tokens in = seq;
        in.x = x;
        const auto y = b->mixer->forward(in, saved, mixers::Pass::train).to_vector(), g = dy.to_vector();
        double sum = 0;
        for (size_t i = 0; i < y.size(); ++i) sum += y[i] * g[i];
        return sum;
      };
      expect_grad_close(loss, x, o.dx, causal ? "dx causal" : "dx bidirectional");
    });
  }
}

// The draw: per query block, distinct key blocks, each disjoint from the window, the first p
// positions and (causal) the future for every query of the block; as many as asked or every
// candidate; the same for the same seed and step, another for another step or seed.
TEST(LocalGlobalRandomBlocks, DrawsOnlyUncoveredBlocks) {
  const int64_t S = 96;
  for (const bool causal : {true, false})
    for (const int64_t rb : {1, 4, 8})
      for (const int64_t w : {1, 5, 16}) {
        mixers::LocalGlobalOptions o;
        o.form = causal ? mixers::LocalGlobalForm::causal : mixers::LocalGlobalForm::bidirectional;
        o.window = w;
        o.first_tokens = causal ? 9 : 0;
        o.random_blocks = 3;
        o.random_block_size = rb;
        o.random_seed = 7;
        const std::vector<int32_t> d = mixers::local_global_random_blocks(o, S, 2);
        ASSERT_EQ(d.size(), static_cast<size_t>(S / rb * 3));
        for (int64_t q = 0; q < S / rb; ++q) {
          int64_t candidates = 0;
          const auto free = [&](int64_t kb) {
            for (int64_t i = q * rb; i < (q + 1) * rb; ++i)
              for (int64_t j = kb * rb; j < (kb + 1) * rb; ++j)
                if (causal ? (j > i || i - j < w || j < o.first_tokens) : std::abs(i - j) < w) return false;
            return true;
          };
          for (int64_t kb = 0; kb < S / rb; ++kb) candidates += free(kb);
          std::vector<int32_t> got(d.begin() + q * 3, d.begin() + (q + 1) * 3);
          const int64_t listed = std::count_if(got.begin(), got.end(), [](int32_t x) { return x >= 0; });
          EXPECT_EQ(listed, std::min<int64_t>(3, candidates)) << "q " << q << " rb " << rb << " w " << w;
          for (size_t i = 0; i < got.size(); ++i) {
            if (got[i] < 0) continue;
            EXPECT_TRUE(free(got[i])) << "block " << got[i] << " for q " << q << " rb " << rb << " w " << w;
            for (size_t j = 0; j < i; ++j) EXPECT_NE(got[i], got[j]);
          }
        }
        EXPECT_EQ(d, mixers::local_global_random_blocks(o, S, 2));
        EXPECT_NE(d, mixers::local_global_random_blocks(o, S, 3));
        o.random_seed = 8;
        EXPECT_NE(d, mixers::local_global_random_blocks(o, S, 2));
      }
}

}  // namespace
