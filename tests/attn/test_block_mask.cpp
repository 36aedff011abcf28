// Block masks (block_mask.h) and strided attention (strided_attention.h) on the CPU: the
// builders list exactly the tiles a brute-force element check finds, full and partial right,
// in both orders and at several tile shapes; flash attention with a block mask equals a dense
// f64 attention under the pattern's rule (written independently); strided_attention equals
// the dense strided mask (and, with global keys, the window + global mask), forward and
// backward, and passes an f64 gradcheck; bad input fails
// with a clear error.
#include <gtest/gtest.h>

#include <map>

#include "attn/block_mask.h"
#include "attn/flash.h"
#include "attn/strided_attention.h"
#include "block_mask_cases.h"
#include "common/check.h"
#include "common/gradcheck.h"

using namespace lctx;
using namespace lctx::test;

namespace {

class BlockMaskPatterns : public testing::TestWithParam<PatternCase> {};

TEST_P(BlockMaskPatterns, ListsMatchBruteForce) {
  const PatternCase& c = GetParam();
  const int64_t S = c.mask->seq_len();
  for (auto [qt, kt] : {std::pair<int64_t, int64_t>{64, 64}, {256, 64}, {128, 64}, {64, 128}, {128, 128}, {16, 48}})
    for (attn::TileOrder order : {attn::TileOrder::by_query, attn::TileOrder::by_key}) {
      const bool by_q = order == attn::TileOrder::by_query;
      const attn::TileLists& l = c.mask->lists(qt, kt, order);
      const int64_t nq = (S + qt - 1) / qt, nk = (S + kt - 1) / kt, n_own = by_q ? nq : nk;
      ASSERT_EQ(static_cast<int64_t>(l.offsets.size()), n_own + 1);
      for (int64_t t = 0; t < n_own; ++t) {
        std::map<int64_t, bool> listed;  // tile -> partial
        for (int32_t e = l.offsets[t]; e < l.offsets[t + 1]; ++e) {
          const int32_t x = l.entries[static_cast<size_t>(e)];
          ASSERT_TRUE(listed.emplace(attn::TileLists::tile(x), attn::TileLists::partial(x)).second);
        }
        for (int64_t u = 0; u < (by_q ? nk : nq); ++u) {
          const int64_t qi = by_q ? t : u, kj = by_q ? u : t;
          int64_t seen = 0;
          for (int64_t i = qi * qt; i < std::min(S, qi * qt + qt); ++i)
            for (int64_t j = kj * kt; j < std::min(S, kj * kt + kt); ++j) seen += c.rule(i, j);
          const bool whole = (qi + 1) * qt <= S && (kj + 1) * kt <= S;
          const auto it = listed.find(u);
          const std::string where = c.name + " tiles " + std::to_string(qt) + "x" + std::to_string(kt) + " (" +
                                    std::to_string(qi) + ", " + std::to_string(kj) + ")";
          if (seen == 0) {
            EXPECT_TRUE(it == listed.end()) << where << " has no visible pair but is listed";
          } else {
            ASSERT_TRUE(it != listed.end()) << where << " has " << seen << " visible pairs but is not listed";
            EXPECT_EQ(it->second, !(whole && seen == qt * kt)) << where << ": " << seen << " visible pairs";
          }
        }
      }
    }
}

TEST_P(BlockMaskPatterns, FlashCpuMatchesDense) {
  const PatternCase& c = GetParam();
  const Qkv x = random_qkv(2, c.mask->seq_len(), 4, 2, 16, 11);
  const DenseResult ref = dense_attention(x, c.rule);
  attn::FlashOptions opts;
  opts.block_mask = c.mask;
  const auto out = attn::flash_forward(x.q, x.k, x.v, opts);
  LCTX_EXPECT_CLOSE(out.o, ref.o, 1e-12);
  LCTX_EXPECT_CLOSE(out.lse, ref.lse, 1e-12);
  const auto g = attn::flash_backward(x.q, x.k, x.v, out.o, out.lse, x.dout, opts);
  LCTX_EXPECT_CLOSE(g.dq, ref.dq, 1e-11);
  LCTX_EXPECT_CLOSE(g.dk, ref.dk, 1e-11);
  LCTX_EXPECT_CLOSE(g.dv, ref.dv, 1e-11);
}

INSTANTIATE_TEST_SUITE_P(Cases, BlockMaskPatterns, testing::ValuesIn(pattern_cases()),
                         [](const testing::TestParamInfo<PatternCase>& i) { return i.param.name; });

TEST(BlockMask, RandomBlocksPerRow) {
  const auto m = attn::random_block_mask(1000, 64, 3, 5);
  const int64_t nb = (1000 + 63) / 64;
  for (int64_t qb = 0; qb < nb; ++qb) {
    int64_t n = 0;
    for (int64_t kb = 0; kb < nb; ++kb) {
      const bool set = (m->random_bits()[qb * m->pattern().random_words + kb / 32] >> (kb % 32)) & 1u;
      EXPECT_FALSE(set && kb > qb) << "causal random block after its query block";
      n += set;
    }
    EXPECT_EQ(n, std::min<int64_t>(3, qb + 1));
  }
  // Same seed, same blocks (every rank draws the same).
  EXPECT_EQ(m->random_bits(), attn::random_block_mask(1000, 64, 3, 5)->random_bits());
  EXPECT_NE(m->random_bits(), attn::random_block_mask(1000, 64, 3, 6)->random_bits());
}

struct StridedCase {
  std::string name;
  int64_t B, S, Hq, Hkv, D, w, s, g = 0;  // g > 0: global keys instead of the stride
};

Rule strided_case_rule(const StridedCase& c) {
  return c.g > 0 ? either(window_rule(c.w, true), global_rule(c.g, true)) : strided_rule(c.w, c.s);
}
std::shared_ptr<const attn::BlockMask> strided_case_mask(const StridedCase& c) {
  return c.g > 0 ? attn::block_mask_union(*attn::window_block_mask(c.S, c.w), *attn::global_block_mask(c.S, c.g))
                 : attn::strided_block_mask(c.S, c.w, c.s);
}

class StridedAttention : public testing::TestWithParam<StridedCase> {};

TEST_P(StridedAttention, MatchesDense) {
  const StridedCase& c = GetParam();
  const Qkv x = random_qkv(c.B, c.S, c.Hq, c.Hkv, c.D, 21);
  const DenseResult ref = dense_attention(x, strided_case_rule(c));
  attn::StridedOptions opts{.window = c.w, .stride = c.s, .n_global = c.g};
  const auto out = attn::strided_attention_forward(x.q, x.k, x.v, opts);
  LCTX_EXPECT_CLOSE(out.o, ref.o, 1e-12);
  LCTX_EXPECT_CLOSE(out.lse, ref.lse, 1e-12);
  const auto g = attn::strided_attention_backward(x.q, x.k, x.v, out.o, out.lse, x.dout, opts);
  LCTX_EXPECT_CLOSE(g.dq, ref.dq, 1e-11);
  LCTX_EXPECT_CLOSE(g.dk, ref.dk, 1e-11);
  LCTX_EXPECT_CLOSE(g.dv, ref.dv, 1e-11);
  // The block-mask form of the same pattern agrees.
  attn::FlashOptions fo;
  fo.block_mask = strided_case_mask(c);
  LCTX_EXPECT_CLOSE(attn::flash_forward(x.q, x.k, x.v, fo).o, ref.o, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Cases, StridedAttention,
                         testing::Values(StridedCase{"s8_w30", 1, 200, 2, 2, 16, 30, 8},
                                         StridedCase{"ragged_gqa", 2, 203, 4, 2, 8, 17, 10},
                                         StridedCase{"w_multiple_of_s", 1, 160, 2, 1, 8, 32, 16},
                                         StridedCase{"w_is_S", 1, 64, 2, 2, 8, 64, 5},
                                         StridedCase{"s1", 1, 50, 2, 2, 8, 3, 1},
                                         StridedCase{"s_beyond_S", 1, 40, 2, 2, 8, 5, 50},
                                         StridedCase{"global5_w30", 1, 200, 2, 2, 16, 30, 0, 5},
                                         StridedCase{"global_gqa", 2, 203, 4, 2, 8, 17, 0, 40},
                                         StridedCase{"global_all_w", 1, 64, 2, 1, 8, 64, 0, 64}),
                         [](const testing::TestParamInfo<StridedCase>& i) { return i.param.name; });

class StridedGradcheck : public testing::TestWithParam<attn::StridedOptions> {};

TEST_P(StridedGradcheck, F64) {
  Qkv x = random_qkv(1, 23, 2, 1, 4, 5);
  const attn::StridedOptions opts = GetParam();
  const auto out = attn::strided_attention_forward(x.q, x.k, x.v, opts);
  const auto g = attn::strided_attention_backward(x.q, x.k, x.v, out.o, out.lse, x.dout, opts);
  const auto r = x.dout.to_vector();
  auto loss = [&] {
    const auto o = attn::strided_attention_forward(x.q, x.k, x.v, opts).o.to_vector();
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += o[i] * r[i];
    return l;
  };
  expect_grad_close(loss, x.q, g.dq, "dq", 1e-6, 1e-7);
  expect_grad_close(loss, x.k, g.dk, "dk", 1e-6, 1e-7);
  expect_grad_close(loss, x.v, g.dv, "dv", 1e-6, 1e-7);
}

INSTANTIATE_TEST_SUITE_P(Cases, StridedGradcheck,
                         testing::Values(attn::StridedOptions{.window = 4, .stride = 3},
                                         attn::StridedOptions{.window = 5, .n_global = 3}),
                         [](const testing::TestParamInfo<attn::StridedOptions>& i) {
                           return i.param.n_global > 0 ? "global" : "strided";
                         });

TEST(BlockMask, BadInput) {
  EXPECT_THROW(attn::window_block_mask(100, 101), Error);  // window larger than the sequence
  EXPECT_THROW(attn::window_block_mask(100, 0), Error);
  EXPECT_THROW(attn::strided_block_mask(100, 10, 0), Error);  // stride 0
  EXPECT_THROW(attn::global_block_mask(10, 11), Error);       // more global tokens than positions
  EXPECT_THROW(attn::random_block_mask(100, 0, 1, 1), Error);
  EXPECT_THROW(attn::block_mask_union(*attn::strided_block_mask(100, 10, 4), *attn::strided_block_mask(100, 10, 8)),
               Error);
  EXPECT_THROW(attn::block_mask_union(*attn::window_block_mask(100, 10), *attn::window_block_mask(100, 10, attn::Mask::none)),
               Error);
  const Qkv x = random_qkv(1, 64, 2, 2, 8, 1);
  EXPECT_THROW(attn::strided_attention_forward(x.q, x.k, x.v, {.window = 8, .stride = 0}), Error);
  EXPECT_THROW(attn::strided_attention_forward(x.q, x.k, x.v, {.window = 65, .stride = 4}), Error);
  EXPECT_THROW(attn::strided_attention_forward(x.q, x.k, x.v, {.window = 8, .stride = 4, .n_global = 2}), Error);
  EXPECT_THROW(attn::strided_attention_forward(x.q, x.k, x.v, {.window = 8, .n_global = 65}), Error);
  attn::FlashOptions opts;
  opts.block_mask = attn::window_block_mask(32, 8);
  EXPECT_THROW(attn::flash_forward(x.q, x.k, x.v, opts), Error);  // mask over 32 positions, S = 64
  opts.block_mask = attn::window_block_mask(64, 8);
  opts.mask = attn::Mask::causal;
  EXPECT_THROW(attn::flash_forward(x.q, x.k, x.v, opts), Error);  // the mask is the whole rule
  opts.mask = attn::Mask::none;
  opts.backend = attn::AttnBackend::cudnn;
  EXPECT_THROW(attn::flash_forward(x.q, x.k, x.v, opts), Error);
}

}  // namespace
