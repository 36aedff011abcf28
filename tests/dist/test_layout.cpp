// Mesh (rank layout, validation, sub-groups) and Layout (permutation, positions, shard/unshard,
// and the ring schedule: every visible (query, key) pair is computed exactly once).
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <numeric>

#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist_test.h"

using namespace lctx;
using namespace lctx::dist;

namespace {

TEST(Mesh, Validation) {
  EXPECT_NO_THROW(Mesh::validate(8, {2, 2, 2}));
  EXPECT_THROW(Mesh::validate(8, {2, 2, 1}), Error);
  EXPECT_THROW(Mesh::validate(4, {1, 0, 4}), Error);
  try {
    Mesh::validate(6, {1, 4, 2});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("world size 6 != dp 1 x ulysses 4 x ring 2 = 8"), std::string::npos)
        << e.what();
  }
}

TEST(Mesh, RankLayout) {
  const MeshShape s{2, 2, 3};
  for (int r = 0; r < s.world(); ++r) {
    const MeshCoords c = Mesh::coords(r, s);
    EXPECT_EQ(Mesh::world_rank(c, s), r);
    EXPECT_EQ(c.sp, c.ring * s.ulysses + c.ulysses);
    EXPECT_EQ(r, c.dp * s.sp() + c.sp);
  }
  EXPECT_EQ(Mesh::coords(5, {2, 2, 2}).ring, 0);  // the example in mesh.h
  EXPECT_EQ(Mesh::coords(5, {2, 2, 2}).ulysses, 1);
}

TEST(Mesh, GroupsOnRanks) {
  for (MeshShape s : {MeshShape{1, 1, 1}, MeshShape{2, 1, 1}, MeshShape{1, 2, 2}, MeshShape{2, 2, 2}, MeshShape{1, 4, 1},
                      MeshShape{1, 1, 4}, MeshShape{2, 1, 2}}) {
    SCOPED_TRACE(s.str());
    const bool ran = test::run_ranks(s.world(), [&](Comm& world) {
      Mesh m(world, s);
      const MeshCoords c = m.coords();
      EXPECT_EQ(m.dp().size(), s.dp);
      EXPECT_EQ(m.sp().size(), s.sp());
      EXPECT_EQ(m.ulysses().size(), s.ulysses);
      EXPECT_EQ(m.ring().size(), s.ring);
      EXPECT_EQ(m.dp().rank(), c.dp);
      EXPECT_EQ(m.sp().rank(), c.sp);
      EXPECT_EQ(m.ulysses().rank(), c.ulysses);
      EXPECT_EQ(m.ring().rank(), c.ring);
      // The members of each group: the sum of world ranks matches the layout.
      auto expect_sum = [&](Comm& g, auto member) {
        std::vector<int64_t> x{world.rank()};
        g.all_reduce(std::span<int64_t>(x), ReduceOp::sum);
        int64_t want = 0;
        for (int i = 0; i < g.size(); ++i) want += member(i);
        EXPECT_EQ(x[0], want);
      };
      expect_sum(m.dp(), [&](int i) { return Mesh::world_rank({i, c.sp, c.ulysses, c.ring}, s); });
      expect_sum(m.sp(), [&](int i) { return c.dp * s.sp() + i; });
      expect_sum(m.ulysses(), [&](int i) { return Mesh::world_rank({c.dp, 0, i, c.ring}, s); });
      expect_sum(m.ring(), [&](int i) { return Mesh::world_rank({c.dp, 0, c.ulysses, i}, s); });
    });
    (void)ran;
  }
}

TEST(Layout, PositionsArePermutation) {
  for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag})
    for (int R : {1, 2, 3, 4})
      for (int U : {1, 2}) {
        Layout l(kind, 24 * R, R, U);
        std::vector<int64_t> all;
        for (int r = 0; r < l.size(); ++r) {
          auto p = l.positions(r);
          EXPECT_EQ((int64_t)p.size(), l.local_len());
          all.insert(all.end(), p.begin(), p.end());
        }
        std::sort(all.begin(), all.end());
        for (int64_t i = 0; i < (int64_t)all.size(); ++i) ASSERT_EQ(all[i], i) << l.str();
      }
  // zigzag, R = 4, S = 16: rank 1 holds chunks 1 and 6.
  EXPECT_EQ(Layout(LayoutKind::zigzag, 16, 4).positions(1), (std::vector<int64_t>{2, 3, 12, 13}));
  // with Ulysses 2, sp rank 3 = ring 1, piece 1.
  EXPECT_EQ(Layout(LayoutKind::zigzag, 16, 4, 2).positions(3), (std::vector<int64_t>{12, 13}));
  EXPECT_EQ(Layout(LayoutKind::zigzag, 16, 4).positions_tensor(1, DType::i32).to_vector(),
            (std::vector<double>{2, 3, 12, 13}));
}

TEST(Layout, Validation) {
  EXPECT_THROW(Layout(LayoutKind::zigzag, 12, 4), Error);      // 8 chunks
  EXPECT_THROW(Layout(LayoutKind::contiguous, 10, 4), Error);  // 4 ranks
  EXPECT_THROW(Layout(LayoutKind::contiguous, 12, 2, 4), Error);
  EXPECT_NO_THROW(Layout(LayoutKind::zigzag, 16, 4));
}

TEST(Layout, ShardUnshardRoundTrip) {
  Tensor full = Tensor::empty({2, 24, 3}, DType::f32);
  std::vector<double> v(full.numel());
  std::iota(v.begin(), v.end(), 0.0);
  full = Tensor::from_vector(full.shape(), v, DType::f32);
  Tensor ids = Tensor::from_vector({2, 24}, std::vector<double>(48, 0.0), DType::i32);
  for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag})
    for (auto [R, U] : {std::pair{1, 1}, {2, 1}, {3, 1}, {2, 2}, {3, 2}}) {
      Layout l(kind, 24, R, U);
      std::vector<Tensor> shards;
      for (int r = 0; r < l.size(); ++r) {
        shards.push_back(l.shard(full, r));
        // Element (b, i, h) of the shard is the token at global position positions(r)[i].
        const auto pos = l.positions(r);
        const auto sv = shards.back().to_vector();
        for (int64_t i = 0; i < l.local_len(); ++i) ASSERT_EQ(sv[i * 3], v[pos[i] * 3]) << l.str();
      }
      EXPECT_EQ(l.unshard(shards).to_vector(), v) << l.str();
      EXPECT_EQ(l.shard(ids, 0).shape(), (Shape{2, l.local_len()}));
    }
}

TEST(Layout, UnshardCollective) {
  const bool ran = test::run_ranks(4, [](Comm& c) {
    Layout l(LayoutKind::zigzag, 16, 4);
    Tensor local = l.positions_tensor(c.rank(), DType::f64).view({1, l.local_len()});
    Tensor full = l.unshard(c, local, 1);
    std::vector<double> want(16);
    std::iota(want.begin(), want.end(), 0.0);
    EXPECT_EQ(full.to_vector(), want);
  });
  if (!ran) GTEST_SKIP() << "needs 4 processes";
}

// Position rule as the flash kernel applies it.
bool visible(int64_t q, int64_t k, const attn::FlashOptions& o) {
  if (o.mask == attn::Mask::causal && k > q) return false;
  if (o.window_left >= 0 && k < q - o.window_left) return false;
  if (o.window_right >= 0 && k > q + o.window_right) return false;
  return true;
}

struct ScheduleCase {
  const char* name;
  LayoutKind kind;
  bool causal;
  int64_t wl, wr;
  bool alibi;
};

// Every visible pair is covered exactly once by some rank's blocks, and no invisible pair
// is: the block table is right, including merged blocks and skipped steps.
TEST(Layout, RingScheduleCoversEveryVisiblePairOnce) {
  const ScheduleCase cases[] = {
      {"contig_causal", LayoutKind::contiguous, true, -1, -1, false},
      {"zigzag_causal", LayoutKind::zigzag, true, -1, -1, false},
      {"zigzag_full", LayoutKind::zigzag, false, -1, -1, false},
      {"zigzag_causal_alibi", LayoutKind::zigzag, true, -1, -1, true},
      {"contig_window", LayoutKind::contiguous, true, 5, -1, false},
      {"zigzag_window", LayoutKind::zigzag, true, 5, -1, false},
      {"contig_bidir_window", LayoutKind::contiguous, false, 4, 3, false},
      {"zigzag_bidir_window_alibi", LayoutKind::zigzag, false, 4, 3, true},
  };
  for (const auto& sc : cases)
    for (int R : {1, 2, 3, 4, 8}) {
      SCOPED_TRACE(std::string(sc.name) + " R=" + std::to_string(R));
      const int64_t S = 48;
      Layout l(sc.kind, S, R);
      attn::FlashOptions o;
      o.mask = sc.causal ? attn::Mask::causal : attn::Mask::none;
      o.window_left = sc.wl;
      o.window_right = sc.wr;
      if (sc.alibi) o.alibi_slopes = Tensor::zeros({1}, DType::f32);
      std::vector<int> count(S * S, 0);
      size_t nsteps = 0;
      for (int r = 0; r < R; ++r) {
        const auto steps = l.ring_schedule(r, o);
        if (r == 0) nsteps = steps.size();
        EXPECT_EQ(steps.size(), nsteps) << "every rank posts the same exchanges";
        const auto qpos = l.positions(r);
        for (const RingStep& st : steps) {
          const auto kpos = l.positions(st.src);
          for (const AttnBlock& b : st.blocks)
            for (int64_t i = b.q_begin; i < b.q_end; ++i)
              for (int64_t j = b.k_begin; j < b.k_end; ++j) {
                if (b.masked && !visible(b.q_pos + i - b.q_begin, b.k_pos + j - b.k_begin, o)) continue;
                if (sc.alibi) {  // ALiBi needs the true positions
                  ASSERT_EQ(b.q_pos + i - b.q_begin, qpos[i]);
                  ASSERT_EQ(b.k_pos + j - b.k_begin, kpos[j]);
                }
                ++count[qpos[i] * S + kpos[j]];
              }
        }
      }
      for (int64_t q = 0; q < S; ++q)
        for (int64_t k = 0; k < S; ++k) ASSERT_EQ(count[q * S + k], visible(q, k, o) ? 1 : 0) << "q=" << q << " k=" << k;
      if (sc.wl >= 0 && R >= 4) {
        EXPECT_LT(nsteps, (size_t)R) << "a window must not walk the whole ring";
      }
    }
}

TEST(Layout, ZigzagBalancesCausalWork) {
  for (int R : {2, 3, 4, 8}) {
    Layout l(LayoutKind::zigzag, 16 * R, R);
    attn::FlashOptions o;
    o.mask = attn::Mask::causal;
    const int64_t c = 8;  // chunk
    for (int r = 0; r < R; ++r) {
      const auto steps = l.ring_schedule(r, o);
      ASSERT_EQ((int)steps.size(), R);
      EXPECT_EQ(steps[0].blocks.size(), 1u);  // one causal call over the local tokens
      for (size_t i = 1; i < steps.size(); ++i) {
        int64_t area = 0;
        for (const auto& b : steps[i].blocks) {
          EXPECT_FALSE(b.masked);
          area += (b.q_end - b.q_begin) * (b.k_end - b.k_begin);
        }
        EXPECT_EQ(area, 2 * c * c) << "half of a (2c x 2c) block, r=" << r << " step " << i;
        EXPECT_EQ(steps[i].blocks.size(), 1u);
      }
    }
  }
}

TEST(Layout, WindowExchangesOnlyNeighbours) {
  attn::FlashOptions o;
  o.mask = attn::Mask::causal;
  o.window_left = 3;  // less than a chunk of 6 tokens
  auto steps = Layout(LayoutKind::contiguous, 48, 8).ring_schedule(3, o);
  ASSERT_EQ(steps.size(), 2u);  // local + the previous rank
  EXPECT_EQ(steps[1].src, 2);
  o.mask = attn::Mask::none;
  o.window_right = 3;
  steps = Layout(LayoutKind::contiguous, 48, 8).ring_schedule(3, o);
  ASSERT_EQ(steps.size(), 3u);  // local, previous (forward hop), next (backward hop)
  EXPECT_EQ(steps[1].src, 2);
  EXPECT_EQ(steps[2].dir, -1);
  EXPECT_EQ(steps[2].src, 4);
}

}  // namespace
