// The local_global kind (mixers/local_global.h) against a dense masked reference in f64: the
// learned global tokens and the sequence through Wqkv (RoPE on the sequence, position 0 for the
// global tokens), then plain softmax attention of every query over [global tokens; sequence]
// with the kind's mask, written here loop by loop without flash or any merge:
//   causal:         key j of the sequence when j <= i and (i - j < w or j < p); every global token
//   bidirectional:  stage 1, each global query over [global tokens; every sequence token];
//                   h = global_tokens + o_g Wo^T; stage 2, each sequence query over
//                   [h Wk^T, h Wv^T; sequence tokens with |i - j| < w]
// y = o Wo^T. Run on 1 and 3 simulated ranks (zigzag and contiguous shards).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <mutex>

#include "common/check.h"
#include "dist/dist_test.h"
#include "mixers/conformance.h"
#include "mixers/dense_attention.h"

using namespace lctx;
using namespace lctx::test;

namespace {

struct LgCase {
  std::string name;
  bool causal = true;
  int64_t window = 1, globals = 0, first = 0;
  bool rope = true;
};

using namespace lctx::test::dense;

struct Dims {
  int64_t B, S, D, H, Hk, hd, g;
};

// The dense reference y [B, S, D] of one case.
Vec dense_reference(const LgCase& c, const Dims& d, const Vec& x, const Vec& wqkv, const Vec& wo, const Vec& e) {
  Vec y;
  const int64_t g = d.g;
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
        return j <= i && (i - j < c.window || j < c.first);
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
      visible = [&](int64_t i, int64_t j) { return j < g || std::abs(i - (j - g)) < c.window; };
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
                     std::string("model.position=") + (c.rope ? "rope" : "none")}};
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
  for (int n : {1, 3})
    for (const char* layout : {"zigzag", "contiguous"}) {
      const train::Config cfg = case_config(kc, s, n, 1, layout);
      Out got;
      std::mutex mu;
      dist::run_simulated(n, [&](dist::Comm& comm) {
        Out o = run_sequence_parallel(cfg, comm, x, dy);
        std::lock_guard<std::mutex> lock(mu);
        if (comm.rank() == 0) got = o;
      });
      EXPECT_LE(rel_error(got.y, want), 1e-12) << c.name << " n=" << n << " " << layout;
    }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, LocalGlobalDense,
    ::testing::Values(LgCase{"causal_sinks", true, 5, 3, 0, true}, LgCase{"causal_first", true, 4, 0, 7, false},
                      LgCase{"causal_sinks_first", true, 6, 2, 10, true}, LgCase{"causal_w1", true, 1, 1, 3, true},
                      LgCase{"causal_window_only", true, 9, 0, 0, true},
                      LgCase{"bidirectional", false, 5, 3, 0, true},
                      LgCase{"bidirectional_whole", false, 48, 2, 0, false},
                      LgCase{"bidirectional_window_only", false, 3, 0, 0, true}),
    [](const auto& info) { return info.param.name; });

}  // namespace
