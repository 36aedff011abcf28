// block_select (attn/block_select.h) in f64 against a dense reference with the same visibility
// (query i of head h sees key j iff j's block is listed for i's block and h's KV head): o, lse
// (-inf for query blocks without keys), a finite-difference gradcheck of dq, dk, dv, both
// gradient modes, strided inputs; shapes with B > 1, GQA, empty slots, Sk != Sq, query and key
// blocks of different sizes. Also: draw_distinct and the refusal of malformed lists.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "attn/block_select.h"
#include "block_select_cases.h"
#include "common/check.h"
#include "common/expect_error.h"
#include "common/gradcheck.h"
#include "core/rng.h"

using namespace lctx;
using namespace lctx::test;

namespace {

Tensor random(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0);
  return t;
}

// Dense softmax attention with the lists' visibility, loop by loop.
attn::FlashOutput dense(const Tensor& q, const Tensor& k, const Tensor& v, const attn::KeyBlocks& kb) {
  const int64_t B = q.size(0), Sq = q.size(1), Hq = q.size(2), D = q.size(3), Sk = k.size(1), Hkv = k.size(2);
  const int64_t T = Sq / kb.q_block, G = Hq / Hkv;
  const auto qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
  std::vector<double> o(static_cast<size_t>(B * Sq * Hq * D), 0.0), lse(static_cast<size_t>(B * Hq * Sq));
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Sq; ++i) {
        const int32_t* list = kb.index.data() + ((b * Hkv + h / G) * T + i / kb.q_block) * kb.per_query;
        std::vector<double> s(static_cast<size_t>(Sk), -std::numeric_limits<double>::infinity());
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Sk; ++j) {
          if (std::find(list, list + kb.per_query, static_cast<int32_t>(j / kb.k_block)) == list + kb.per_query)
            continue;
          double dot = 0;
          for (int64_t e = 0; e < D; ++e)
            dot += qv[((b * Sq + i) * Hq + h) * D + e] * kv[((b * Sk + j) * Hkv + h / G) * D + e];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < Sk; ++j) sum += std::isinf(s[j]) ? 0.0 : std::exp(s[j] - mx);
        lse[(b * Hq + h) * Sq + i] = sum > 0 ? mx + std::log(sum) : -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Sk; ++j) {
          if (std::isinf(s[j])) continue;
          const double p = std::exp(s[j] - mx) / sum;
          for (int64_t e = 0; e < D; ++e)
            o[((b * Sq + i) * Hq + h) * D + e] += p * vv[((b * Sk + j) * Hkv + h / G) * D + e];
        }
      }
  return {Tensor::from_vector(q.shape(), o, DType::f64), Tensor::from_vector({B, Hq, Sq}, lse, DType::f64)};
}

double dot(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector(), y = b.to_vector();
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}

class BlockSelect : public testing::TestWithParam<BlockSelectCase> {};

TEST_P(BlockSelect, MatchesDenseReference) {
  const BlockSelectCase& c = GetParam();
  const attn::KeyBlocks kb = key_blocks(c);
  const Tensor q = random({c.B, c.Sq, c.Hq, c.D}, 1), k = random({c.B, c.Sk, c.Hkv, c.D}, 2),
               v = random({c.B, c.Sk, c.Hkv, c.D}, 3);
  const attn::FlashOutput want = dense(q, k, v, kb);
  for (const attn::OutputDType od : {attn::OutputDType::input, attn::OutputDType::f32}) {
    attn::FlashOptions opts;
    opts.out_dtype = od;
    const attn::FlashOutput got = attn::block_select_forward(q, k, v, kb, opts);
    LCTX_EXPECT_CLOSE(got.o, want.o, 1e-12);
    LCTX_EXPECT_CLOSE(finite_lse(got.lse, want.lse), finite_lse(want.lse, want.lse), 1e-12);
  }
}

TEST_P(BlockSelect, GradcheckBothModes) {
  const BlockSelectCase& c = GetParam();
  const attn::KeyBlocks kb = key_blocks(c);
  Tensor q = random({c.B, c.Sq, c.Hq, c.D}, 4), k = random({c.B, c.Sk, c.Hkv, c.D}, 5),
         v = random({c.B, c.Sk, c.Hkv, c.D}, 6);
  const Tensor w = random(q.shape(), 7);  // loss = <o, w>
  const attn::FlashOptions opts;
  const attn::FlashOutput f = attn::block_select_forward(q, k, v, kb, opts);
  const attn::FlashGrads g = attn::block_select_backward(q, k, v, f.o, f.lse, w, kb, opts);
  const auto loss = [&] { return dot(dense(q, k, v, kb).o, w); };
  expect_grad_close(loss, q, g.dq, "dq");
  expect_grad_close(loss, k, g.dk, "dk");
  expect_grad_close(loss, v, g.dv, "dv");
  // Accumulate adds to what the tensors hold; overwrite writes into given (strided) tensors.
  const Tensor dq0 = random(q.shape(), 8), dk0 = random(k.shape(), 9), dv0 = random(k.shape(), 10);
  attn::FlashGrads acc{dq0.clone(), dk0.clone(), dv0.clone()};
  attn::block_select_backward(q, k, v, f.o, f.lse, w, kb, opts, GradMode::accumulate, acc);
  const auto plus = [](const Tensor& a, const Tensor& b) {
    Tensor r = a.clone();
    r.add_from(b);
    return r;
  };
  LCTX_EXPECT_CLOSE(acc.dq, plus(dq0, g.dq), 1e-12);
  LCTX_EXPECT_CLOSE(acc.dk, plus(dk0, g.dk), 1e-12);
  LCTX_EXPECT_CLOSE(acc.dv, plus(dv0, g.dv), 1e-12);
  Tensor wide = random({c.B, c.Sk + 3, c.Hkv, c.D}, 11);
  attn::FlashGrads into{Tensor(), wide.slice(1, 3, c.Sk + 3), Tensor()};
  const attn::FlashGrads ow = attn::block_select_backward(q, k, v, f.o, f.lse, w, kb, opts, GradMode::overwrite, into);
  LCTX_EXPECT_CLOSE(wide.slice(1, 3, c.Sk + 3), g.dk, 1e-12);
  LCTX_EXPECT_CLOSE(ow.dq, g.dq, 1e-12);
  LCTX_EXPECT_CLOSE(ow.dv, g.dv, 1e-12);
}

// Strided q/k/v views (a sequence slice) give what their contiguous copies give.
TEST_P(BlockSelect, StridedInputs) {
  const BlockSelectCase& c = GetParam();
  const attn::KeyBlocks kb = key_blocks(c);
  const Tensor qa = random({c.B, c.Sq + 2, c.Hq, c.D}, 12), ka = random({c.B, c.Sk + 1, c.Hkv, c.D}, 13);
  const Tensor q = qa.slice(1, 2, c.Sq + 2), k = ka.slice(1, 1, c.Sk + 1), v = ka.slice(1, 0, c.Sk);
  const attn::FlashOptions opts;
  const attn::FlashOutput got = attn::block_select_forward(q, k, v, kb, opts);
  const attn::FlashOutput want = attn::block_select_forward(q.contiguous(), k.contiguous(), v.contiguous(), kb, opts);
  LCTX_EXPECT_CLOSE(got.o, want.o, 0.0);
}

INSTANTIATE_TEST_SUITE_P(Cases, BlockSelect,
                         testing::Values(BlockSelectCase{"mha", 1, 8, 8, 2, 2, 4, 2, 2, 2},
                                         BlockSelectCase{"gqa_batch", 2, 12, 12, 4, 2, 4, 3, 3, 3},
                                         BlockSelectCase{"mqa_long_keys", 2, 8, 20, 3, 1, 4, 4, 5, 3},
                                         BlockSelectCase{"rows_vs_blocks", 1, 6, 9, 2, 1, 3, 1, 3, 2},
                                         BlockSelectCase{"more_slots_than_blocks", 1, 8, 6, 2, 2, 4, 4, 2, 5},
                                         BlockSelectCase{"ragged_keys", 2, 4, 11, 2, 1, 4, 2, 4, 2},
                                         BlockSelectCase{"full_stretch", 1, 24, 24, 4, 2, 4, 1, 2, 3}),
                         [](const testing::TestParamInfo<BlockSelectCase>& i) { return i.param.name; });

TEST(BlockSelect, DrawDistinct) {
  const std::vector<int64_t> a = attn::draw_distinct(5, 3, 10, 4), b = attn::draw_distinct(5, 3, 10, 4);
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), 4u);
  std::vector<int64_t> s = a;
  std::sort(s.begin(), s.end());
  EXPECT_EQ(std::unique(s.begin(), s.end()), s.end());
  EXPECT_TRUE(std::all_of(a.begin(), a.end(), [](int64_t x) { return x >= 0 && x < 10; }));
  EXPECT_NE(a, attn::draw_distinct(5, 4, 10, 4));
  EXPECT_EQ(attn::draw_distinct(5, 3, 6, 9).size(), 6u);
  EXPECT_TRUE(attn::draw_distinct(5, 3, 0, 2).empty());
}

TEST(BlockSelect, RefusesMalformedLists) {
  const Tensor q = random({1, 4, 2, 4}, 1), k = random({1, 8, 2, 4}, 2);
  const attn::FlashOptions opts;
  attn::KeyBlocks kb{.q_block = 2, .k_block = 4, .per_query = 2, .index = {0, 0, 1, -1, 1, -1, -1, -1}};
  expect_error([&] { attn::block_select_forward(q, k, k, kb, opts); },
               {"block_select_forward", "key block 0 listed twice"});
  kb.index = {0, 2, 1, -1, 1, -1, -1, -1};
  expect_error([&] { attn::block_select_forward(q, k, k, kb, opts); },
               {"block_select_forward", "key block 2", "outside [0, 2)"});
  kb.index.pop_back();
  expect_error([&] { attn::block_select_forward(q, k, k, kb, opts); }, {"block_select_forward", "expected"});
  kb.q_block = 3;
  expect_error([&] { attn::block_select_forward(q, k, k, kb, opts); },
               {"block_select_forward", "not a multiple of q_block 3"});
  attn::FlashOptions causal;
  causal.mask = attn::Mask::causal;
  kb = {.q_block = 2, .k_block = 4, .per_query = 1, .index = {0, 1, 0, 1}};
  expect_error([&] { attn::block_select_forward(q, k, k, kb, causal); },
               {"block_select_forward", "the key lists are the whole rule"});
}

}  // namespace
