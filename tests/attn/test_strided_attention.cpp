// Strided attention over a query range (strided_attention.h, StridedOptions::q_offset) on the
// CPU: the queries at positions [q0, q0 + Sq) against the keys [0, q0 + Sq) equal those rows of
// a dense f64 attention under the pattern's rule (block_mask_cases.h, written independently),
// with dK/dV the contribution of those queries alone -- at offsets on and off the stride's
// residue boundary, ragged ends, GQA, strided views, and the global-key form; f64 gradchecks
// at an offset; bad ranges fail with a clear error. (Whole sequences: test_block_mask.cpp.)
#include <gtest/gtest.h>

#include <string>

#include "attn/strided_attention.h"
#include "block_mask_cases.h"
#include "common/check.h"
#include "common/gradcheck.h"

using namespace lctx;
using namespace lctx::test;

namespace {

struct RangeCase {
  std::string name;
  int64_t B, q0, Sq, Hq, Hkv, D, w, s, g = 0;  // g > 0: global keys instead of the stride
};
void PrintTo(const RangeCase& c, std::ostream* os) { *os << c.name; }

Rule range_rule(const RangeCase& c) {
  return c.g > 0 ? either(window_rule(c.w, true), global_rule(c.g, true)) : strided_rule(c.w, c.s);
}

class StridedRange : public testing::TestWithParam<RangeCase> {};

TEST_P(StridedRange, MatchesDenseRows) {
  const RangeCase& c = GetParam();
  const int64_t S = c.q0 + c.Sq;
  Qkv x = random_qkv(c.B, S, c.Hq, c.Hkv, c.D, 31);
  x.dout.slice(1, 0, c.q0).zero();  // the reference's dK/dV then come from the range's queries alone
  const DenseResult ref = dense_attention(x, range_rule(c));
  const attn::StridedOptions opts{.window = c.w, .stride = c.s, .n_global = c.g, .q_offset = c.q0};
  // q and dout as strided views of the whole sequence (the mixer passes slices of its shards).
  const Tensor q = x.q.slice(1, c.q0, S), dout = x.dout.slice(1, c.q0, S);
  const auto out = attn::strided_attention_forward(q, x.k, x.v, opts);
  LCTX_EXPECT_CLOSE(out.o, ref.o.slice(1, c.q0, S), 1e-12);
  LCTX_EXPECT_CLOSE(out.lse, ref.lse.slice(2, c.q0, S), 1e-12);
  const auto g = attn::strided_attention_backward(q, x.k, x.v, out.o, out.lse, dout, opts);
  EXPECT_EQ(g.dq.shape(), q.shape());
  EXPECT_EQ(g.dk.shape(), x.k.shape());
  LCTX_EXPECT_CLOSE(g.dq, ref.dq.slice(1, c.q0, S), 1e-11);
  LCTX_EXPECT_CLOSE(g.dk, ref.dk, 1e-11);
  LCTX_EXPECT_CLOSE(g.dv, ref.dv, 1e-11);
}

INSTANTIATE_TEST_SUITE_P(Cases, StridedRange,
                         testing::Values(RangeCase{"on_residue_boundary", 1, 64, 40, 2, 2, 8, 10, 8},
                                         RangeCase{"off_boundary_ragged", 2, 37, 29, 4, 2, 8, 6, 5},
                                         RangeCase{"window_reaches_start", 1, 9, 12, 2, 1, 8, 21, 4},
                                         RangeCase{"stride_beyond_range", 1, 50, 7, 2, 2, 4, 3, 16},
                                         RangeCase{"one_query", 1, 41, 1, 2, 2, 4, 5, 3},
                                         RangeCase{"stride1", 1, 13, 10, 2, 2, 4, 2, 1},
                                         RangeCase{"whole_sequence", 2, 0, 45, 4, 2, 8, 7, 6},
                                         RangeCase{"global_offset", 2, 33, 20, 4, 2, 8, 9, 0, 5}),
                         [](const testing::TestParamInfo<RangeCase>& i) { return i.param.name; });

class StridedRangeGradcheck : public testing::TestWithParam<attn::StridedOptions> {};

TEST_P(StridedRangeGradcheck, F64) {
  const attn::StridedOptions opts = GetParam();
  const int64_t Sq = 9, S = opts.q_offset + Sq;
  Qkv full = random_qkv(1, S, 2, 1, 4, 7);
  Tensor q = full.q.slice(1, opts.q_offset, S).contiguous(), dout = full.dout.slice(1, opts.q_offset, S).contiguous();
  const auto out = attn::strided_attention_forward(q, full.k, full.v, opts);
  const auto g = attn::strided_attention_backward(q, full.k, full.v, out.o, out.lse, dout, opts);
  const auto r = dout.to_vector();
  auto loss = [&] {
    const auto o = attn::strided_attention_forward(q, full.k, full.v, opts).o.to_vector();
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += o[i] * r[i];
    return l;
  };
  expect_grad_close(loss, q, g.dq, "dq", 1e-6, 1e-7);
  expect_grad_close(loss, full.k, g.dk, "dk", 1e-6, 1e-7);
  expect_grad_close(loss, full.v, g.dv, "dv", 1e-6, 1e-7);
}

INSTANTIATE_TEST_SUITE_P(Cases, StridedRangeGradcheck,
                         testing::Values(attn::StridedOptions{.window = 3, .stride = 4, .q_offset = 13},
                                         attn::StridedOptions{.window = 4, .stride = 3, .q_offset = 12},
                                         attn::StridedOptions{.window = 5, .n_global = 3, .q_offset = 7}),
                         [](const testing::TestParamInfo<attn::StridedOptions>& i) {
                           return (i.param.n_global > 0 ? "global_at_" : "strided_at_") +
                                  std::to_string(i.param.q_offset);
                         });

void expect_error(const Tensor& q, const Tensor& k, const attn::StridedOptions& opts, const std::string& needle) {
  try {
    attn::strided_attention_forward(q, k, k, opts);
    ADD_FAILURE() << "accepted: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(StridedRange, BadInput) {
  const Qkv x = random_qkv(1, 64, 2, 2, 8, 1);
  const Tensor q = x.q.slice(1, 40, 64);
  expect_error(q, x.k, {.window = 8, .stride = 4, .q_offset = 30}, "must hold the keys [0, 54)");
  expect_error(q, x.k, {.window = 8, .stride = 4, .q_offset = -1}, "q_offset -1");
  expect_error(q, x.k, {.window = 65, .stride = 4, .q_offset = 40}, "window 65");
  expect_error(q, x.k, {.window = 8, .stride = 0, .q_offset = 40}, "stride 0");
  expect_error(q, x.k, {.window = 8, .n_global = 65, .q_offset = 40}, "65 global tokens");
}

}  // namespace
