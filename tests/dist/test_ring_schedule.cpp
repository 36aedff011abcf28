// The ring schedule (ring_schedule.h): every visible (query, key) pair is computed exactly once,
// zigzag balances causal work, and a window exchanges only the neighbours it reaches.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "dist/ring_schedule.h"

using namespace lctx;
using namespace lctx::dist;

namespace {

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
TEST(RingSchedule, CoversEveryVisiblePairOnce) {
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
        const auto steps = ring_schedule(l, r, o);
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

TEST(RingSchedule, ZigzagBalancesCausalWork) {
  for (int R : {2, 3, 4, 8}) {
    Layout l(LayoutKind::zigzag, 16 * R, R);
    attn::FlashOptions o;
    o.mask = attn::Mask::causal;
    const int64_t c = 8;  // chunk
    for (int r = 0; r < R; ++r) {
      const auto steps = ring_schedule(l, r, o);
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

TEST(RingSchedule, WindowExchangesOnlyNeighbours) {
  attn::FlashOptions o;
  o.mask = attn::Mask::causal;
  o.window_left = 3;  // less than a chunk of 6 tokens
  auto steps = ring_schedule(Layout(LayoutKind::contiguous, 48, 8), 3, o);
  ASSERT_EQ(steps.size(), 2u);  // local + the previous rank
  EXPECT_EQ(steps[1].src, 2);
  o.mask = attn::Mask::none;
  o.window_right = 3;
  steps = ring_schedule(Layout(LayoutKind::contiguous, 48, 8), 3, o);
  ASSERT_EQ(steps.size(), 3u);  // local, previous (forward hop), next (backward hop)
  EXPECT_EQ(steps[1].src, 2);
  EXPECT_EQ(steps[2].dir, -1);
  EXPECT_EQ(steps[2].src, 4);
}

// Packed documents: blocks whose positions share no document are dropped (and the hops only
// they needed), and every pair visible by position and document is still covered once.
TEST(RingSchedule, DocumentsDropBlocksAndHops) {
  attn::FlashOptions o;
  o.mask = attn::Mask::causal;
  const int64_t S = 64;
  // One document per zigzag chunk of 8 tokens: no rank needs another rank's keys.
  std::vector<int64_t> chunks;
  for (int64_t p = 0; p < S; p += 8) chunks.push_back(p);
  o.documents = std::make_shared<const attn::Documents>(S, std::vector<std::vector<int64_t>>{chunks});
  for (int r = 0; r < 4; ++r) EXPECT_EQ(ring_schedule(Layout(LayoutKind::zigzag, S, 4), r, o).size(), 1u);
  // One document over everything: the plain causal schedule.
  o.documents = std::make_shared<const attn::Documents>(S, std::vector<std::vector<int64_t>>{{0}});
  EXPECT_EQ(ring_schedule(Layout(LayoutKind::zigzag, S, 4), 1, o).size(), 4u);

  // Documents of mixed lengths in two rows: coverage of every visible pair.
  const std::vector<std::vector<int64_t>> starts = {{0, 1, 2, 9, 10, 30, 31, 50}, {0, 20, 21, 22, 60}};
  o.documents = std::make_shared<const attn::Documents>(S, starts);
  for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag})
    for (int R : {1, 2, 3, 4, 8}) {
      if (S % (2 * R)) continue;
      SCOPED_TRACE(std::string(layout_kind_name(kind)) + " R=" + std::to_string(R));
      Layout l(kind, S, R);
      std::vector<int> count(S * S, 0);
      for (int r = 0; r < R; ++r) {
        const auto qpos = l.positions(r);
        for (const RingStep& st : ring_schedule(l, r, o)) {
          const auto kpos = l.positions(st.src);
          for (const AttnBlock& b : st.blocks)
            for (int64_t i = b.q_begin; i < b.q_end; ++i)
              for (int64_t j = b.k_begin; j < b.k_end; ++j)
                if (!b.masked || visible(b.q_pos + i - b.q_begin, b.k_pos + j - b.k_begin, o))
                  ++count[qpos[i] * S + kpos[j]];
        }
      }
      for (int64_t q = 0; q < S; ++q)
        for (int64_t k = 0; k < S; ++k) {
          bool same_doc = false;
          for (int64_t b = 0; b < 2; ++b) same_doc |= o.documents->doc_of(b, q) == o.documents->doc_of(b, k);
          if (!visible(q, k, o)) {
            ASSERT_EQ(count[q * S + k], 0) << "q=" << q << " k=" << k;
          } else if (same_doc) {
            ASSERT_EQ(count[q * S + k], 1) << "q=" << q << " k=" << k;
          }
        }
    }
}

}  // namespace
