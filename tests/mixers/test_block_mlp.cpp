// mixers/block_mlp.h (NSA's learned block compression): the rows equal the MLP written out here
// loop by loop (with a trailing partial block left out); the backward equals central differences
// element by element for the K/V rows and all 10 parameters (f64); on 2 and 4 simulated ranks,
// zigzag and contiguous, the rows, the rows' gradients and the parameter gradients summed over
// the ranks equal one rank's; a block split over ranks is an error naming compress_block.
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>
#include <string>
#include <vector>

#include "common/expect_error.h"
#include "common/gradcheck.h"
#include "core/rng.h"
#include "dist/comm.h"
#include "dist/dist_test.h"
#include "dist/layout.h"
#include "dist/sim_comm.h"
#include "mixers/block_mlp.h"

using namespace lctx;
using namespace lctx::mixers;

namespace {

using Vec = std::vector<double>;

constexpr int64_t kB = 2, kHk = 2, kHd = 4, kHidden = 5;

Tensor random(const Shape& shape, uint64_t seed, double std = 1.0) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0, 0.0, std);
  return t;
}

BlockMlp random_mlp(int64_t b, uint64_t seed) {
  return {random({b, kHd}, seed, 0.5), random({kHidden, b * kHd}, seed + 1, 0.4), random({kHidden}, seed + 2, 0.3),
          random({kHd, kHidden}, seed + 3, 0.5), random({kHd}, seed + 4, 0.3)};
}

BlockMlp zeros_like(const BlockMlp& m) {
  return {Tensor::zeros(m.pos.shape(), DType::f64), Tensor::zeros(m.w1.shape(), DType::f64),
          Tensor::zeros(m.b1.shape(), DType::f64), Tensor::zeros(m.w2.shape(), DType::f64),
          Tensor::zeros(m.b2.shape(), DType::f64)};
}

double gelu(double x) { return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

// The compressed rows of rows [B, S, Hk, hd]: [B, S / b, Hk, hd], written out.
Vec reference(const Tensor& rows, int64_t b, const BlockMlp& m) {
  const int64_t S = rows.size(1), N = S / b;
  const Vec x = rows.to_vector(), pos = m.pos.to_vector(), w1 = m.w1.to_vector(), b1 = m.b1.to_vector(),
            w2 = m.w2.to_vector(), b2 = m.b2.to_vector();
  Vec out;
  for (int64_t bi = 0; bi < kB; ++bi)
    for (int64_t c = 0; c < N; ++c)
      for (int64_t kh = 0; kh < kHk; ++kh) {
        Vec h(kHidden);
        for (int64_t u = 0; u < kHidden; ++u) {
          double z = b1[u];
          for (int64_t t = 0; t < b; ++t)
            for (int64_t e = 0; e < kHd; ++e)
              z += w1[u * b * kHd + t * kHd + e] * (x[((bi * S + c * b + t) * kHk + kh) * kHd + e] + pos[t * kHd + e]);
          h[u] = gelu(z);
        }
        for (int64_t e = 0; e < kHd; ++e) {
          double y = b2[e];
          for (int64_t u = 0; u < kHidden; ++u) y += w2[e * kHidden + u] * h[u];
          out.push_back(y);
        }
      }
  return out;
}

double max_abs_diff(const Vec& a, const Vec& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  return p;
}

TEST(BlockMlp, RowsMatchFormula) {
  LCTX_SIM_ONLY();
  for (const int64_t S : {24, 26}) {  // 26: a trailing partial block of 2 rows is not formed
    const int64_t b = 3, N = S / b;
    const Tensor k = random({kB, S, kHk, kHd}, 1), v = random({kB, S, kHk, kHd}, 2);
    const BlockMlpPair w{random_mlp(b, 10), random_mlp(b, 20)};
    dist::run_simulated(1, [&](dist::Comm& c) {
      const BlockRows r = block_mlp_forward(c, k, v, iota(S), b, N, w);
      ASSERT_EQ(r.k.shape(), (Shape{kB, N, kHk, kHd}));
      EXPECT_LE(max_abs_diff(r.k.to_vector(), reference(k, b, w.k)), 1e-13) << "S " << S;
      EXPECT_LE(max_abs_diff(r.v.to_vector(), reference(v, b, w.v)), 1e-13) << "S " << S;
    });
  }
}

// loss = <rows_k, gk> + <rows_v, gv>: its gradient is the backward of dc = [gk, gv].
TEST(BlockMlp, BackwardMatchesFiniteDifferences) {
  LCTX_SIM_ONLY();
  const int64_t S = 13, b = 3, N = S / b;  // with a trailing partial block (no gradient)
  Tensor k = random({kB, S, kHk, kHd}, 3), v = random({kB, S, kHk, kHd}, 4);
  const BlockMlpPair w{random_mlp(b, 30), random_mlp(b, 40)};
  const Tensor gc = random({2, kB, N, kHk, kHd}, 5);
  const BlockMlpPair g{zeros_like(w.k), zeros_like(w.v)};
  const Tensor dk = Tensor::zeros(k.shape(), DType::f64), dv = Tensor::zeros(v.shape(), DType::f64);
  const Vec gv = gc.to_vector();
  dist::run_simulated(1, [&](dist::Comm& c) {
    const Tensor dc = gc.clone();
    block_mlp_backward(c, dc, k, v, iota(S), b, w, g, dk, dv);
    const auto loss = [&] {
      const BlockRows r = block_mlp_forward(c, k, v, iota(S), b, N, w);
      const Vec rk = r.k.to_vector(), rv = r.v.to_vector();
      double l = 0;
      for (size_t i = 0; i < rk.size(); ++i) l += rk[i] * gv[i] + rv[i] * gv[rk.size() + i];
      return l;
    };
    test::expect_grad_close(loss, k, dk, "k", 1e-6, 1e-7);
    test::expect_grad_close(loss, v, dv, "v", 1e-6, 1e-7);
    const char* names[] = {"pos", "w1", "b1", "w2", "b2"};
    for (const auto& [which, wm, gm] : {std::tuple{"k ", &w.k, &g.k}, std::tuple{"v ", &w.v, &g.v}}) {
      Tensor ws[] = {wm->pos, wm->w1, wm->b1, wm->w2, wm->b2};
      const Tensor gs[] = {gm->pos, gm->w1, gm->b1, gm->w2, gm->b2};
      for (int i = 0; i < 5; ++i)
        test::expect_grad_close(loss, ws[i], gs[i], (std::string(which) + names[i]).c_str(), 1e-6, 1e-7);
    }
  });
}

struct Result {
  Vec rows;         // [2, B, N, Hk, hd]
  Tensor dk, dv;    // [B, S, Hk, hd], unsharded
  Vec grads;        // the 10 parameters' gradients, summed over the ranks
};

Result on_ranks(int n, dist::LayoutKind kind, const Tensor& k, const Tensor& v, int64_t b, const BlockMlpPair& w,
                const Tensor& gc) {
  const int64_t S = k.size(1), N = S / b;
  const dist::Layout layout(kind, S, n);
  Result res;
  std::vector<Tensor> dks(static_cast<size_t>(n)), dvs(static_cast<size_t>(n));
  std::mutex mu;
  dist::run_simulated(n, [&](dist::Comm& c) {
    const int r = c.rank();
    const std::vector<int64_t> pos = layout.positions(r);
    const Tensor kl = layout.shard(k, r), vl = layout.shard(v, r);
    const BlockRows rows = block_mlp_forward(c, kl, vl, pos, b, N, w);
    // Each rank holds a share of the rows' gradient; the shares sum to gc.
    Tensor dc = gc.clone();
    const Vec share = dc.to_vector();
    Vec mine(share.size());
    const double f = 2.0 * (r + 1) / (n * (n + 1.0));
    for (size_t i = 0; i < share.size(); ++i) mine[i] = f * share[i];
    dc = Tensor::from_vector(gc.shape(), mine, DType::f64);
    const BlockMlpPair g{zeros_like(w.k), zeros_like(w.v)};
    const Tensor dk = Tensor::zeros(kl.shape(), DType::f64), dv = Tensor::zeros(vl.shape(), DType::f64);
    block_mlp_backward(c, dc, kl, vl, pos, b, w, g, dk, dv);
    std::lock_guard<std::mutex> lock(mu);
    dks[static_cast<size_t>(r)] = dk;
    dvs[static_cast<size_t>(r)] = dv;
    Vec gv;
    for (const BlockMlp* m : {&g.k, &g.v})
      for (const Tensor& t : {m->pos, m->w1, m->b1, m->w2, m->b2}) {
        const Vec x = t.to_vector();
        gv.insert(gv.end(), x.begin(), x.end());
      }
    if (res.grads.empty()) res.grads.assign(gv.size(), 0.0);
    for (size_t i = 0; i < gv.size(); ++i) res.grads[i] += gv[i];
    if (r == 0) {
      res.rows = rows.k.to_vector();
      const Vec rv = rows.v.to_vector();
      res.rows.insert(res.rows.end(), rv.begin(), rv.end());
    }
  });
  res.dk = layout.unshard(dks);
  res.dv = layout.unshard(dvs);
  return res;
}

TEST(BlockMlp, SequenceParallelEqualsOneRank) {
  LCTX_SIM_ONLY();
  const int64_t S = 24, b = 3;  // segments of 3 (zigzag, 4 ranks) and up
  const Tensor k = random({kB, S, kHk, kHd}, 6), v = random({kB, S, kHk, kHd}, 7);
  const BlockMlpPair w{random_mlp(b, 50), random_mlp(b, 60)};
  const Tensor gc = random({2, kB, S / b, kHk, kHd}, 8);
  const Result one = on_ranks(1, dist::LayoutKind::contiguous, k, v, b, w, gc);
  for (int n : {1, 2, 4})
    for (dist::LayoutKind kind : {dist::LayoutKind::zigzag, dist::LayoutKind::contiguous}) {
      const Result got = on_ranks(n, kind, k, v, b, w, gc);
      const std::string what = "n=" + std::to_string(n) + " " + std::string(dist::layout_kind_name(kind));
      EXPECT_LE(max_abs_diff(got.rows, one.rows), 1e-13) << what;
      EXPECT_LE(max_abs_diff(got.dk.to_vector(), one.dk.to_vector()), 1e-13) << what;
      EXPECT_LE(max_abs_diff(got.dv.to_vector(), one.dv.to_vector()), 1e-13) << what;
      EXPECT_LE(max_abs_diff(got.grads, one.grads), 1e-12) << what;
    }
}

TEST(BlockMlp, BlockSplitOverRanksIsAnError) {
  LCTX_SIM_ONLY();
  const int64_t S = 24, b = 5;  // 2 ranks, contiguous: segments of 12; block 2 = [10, 15) is split
  const Tensor k = random({kB, S, kHk, kHd}, 9);
  const BlockMlpPair w{random_mlp(b, 70), random_mlp(b, 80)};
  const dist::Layout layout(dist::LayoutKind::contiguous, S, 2);
  test::expect_error(
      [&] {
        dist::run_simulated(2, [&](dist::Comm& c) {
          const Tensor kl = layout.shard(k, c.rank());
          block_mlp_forward(c, kl, kl, layout.positions(c.rank()), b, S / b, w);
        });
      },
      {"block mlp", "compress_block 5", "must divide every segment"});
}

}  // namespace
