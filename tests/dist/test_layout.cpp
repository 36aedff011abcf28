// Mesh (rank layout, validation, sub-groups) and Layout (permutation, positions, owners,
// shard/unshard). The ring schedule's tests are in test_ring_schedule.cpp.
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

// owner() inverts positions(): the rank and local row of every global position, for every
// layout; owner_runs() cuts a position list into the fewest runs of consecutive local rows.
TEST(Layout, OwnerInvertsPositions) {
  for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag})
    for (auto [R, U] : {std::pair{1, 1}, {2, 1}, {3, 1}, {4, 1}, {8, 1}, {1, 2}, {2, 2}, {2, 3}, {4, 2}}) {
      Layout l(kind, 12 * R * U, R, U);
      int64_t seen = 0;
      for (int r = 0; r < l.size(); ++r) {
        const auto pos = l.positions(r);
        for (int64_t i = 0; i < static_cast<int64_t>(pos.size()); ++i, ++seen)
          ASSERT_EQ(l.owner(pos[i]), (Owner{r, i})) << l.str() << " position " << pos[i];
      }
      EXPECT_EQ(seen, l.seq_len());
      EXPECT_THROW(l.owner(-1), Error);
      EXPECT_THROW(l.owner(l.seq_len()), Error);
    }
  // zigzag, R = 4, S = 16: position 13 is rank 1's 4th token; with Ulysses 2 it is sp rank 3's 2nd.
  EXPECT_EQ(Layout(LayoutKind::zigzag, 16, 4).owner(13), (Owner{1, 3}));
  EXPECT_EQ(Layout(LayoutKind::zigzag, 16, 4, 2).owner(13), (Owner{3, 1}));
  try {
    Layout(LayoutKind::zigzag, 16, 4).owner(16);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 16 outside [0, 16)"), std::string::npos) << e.what();
  }
}

TEST(Layout, OwnerRuns) {
  // zigzag, R = 2, S = 8: rank 0 holds 0 1 | 6 7, rank 1 holds 2 3 | 4 5.
  const Layout l(LayoutKind::zigzag, 8, 2);
  const std::vector<int64_t> pos{0, 1, 6, 7, 3, 4, 5, 5, 2};
  const std::vector<OwnerRun> want{{0, 0, 0, 4}, {4, 1, 1, 3}, {7, 1, 3, 1}, {8, 1, 0, 1}};
  EXPECT_EQ(l.owner_runs(pos), want);
  EXPECT_TRUE(l.owner_runs({}).empty());
  const std::vector<int64_t> bad{3, -2};
  EXPECT_THROW(l.owner_runs(bad), Error);
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

}  // namespace
