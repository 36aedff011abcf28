// CPU flash attention (f64 and f32) against a naive O(S^2) f64 reference for every option,
// finite-difference gradients, fully masked rows, and exact merging over split key blocks.
#include <gtest/gtest.h>

#include "attn/flash.h"
#include "common/check.h"
#include "common/gradcheck.h"
#include "flash_reference.h"

using namespace lctx;
using namespace lctx::test;
using attn::FlashGrads;
using attn::GradMode;

namespace {

// Every option alone and combined; odd lengths, Sq != Sk, key blocks before/after.
std::vector<FlashCase> option_cases() {
  std::vector<FlashCase> v;
  auto add = [&](FlashCase c) { v.push_back(c); };
  add({.name = "plain", .B = 2, .Sq = 70, .Sk = 70, .Hq = 3, .Hkv = 3, .D = 16});
  add({.name = "causal", .B = 2, .Sq = 70, .Sk = 70, .Hq = 2, .Hkv = 2, .D = 16, .causal = true});
  add({.name = "gqa2_causal", .B = 1, .Sq = 65, .Sk = 65, .Hq = 4, .Hkv = 2, .D = 8, .causal = true});
  add({.name = "gqa8", .B = 1, .Sq = 40, .Sk = 90, .Hq = 16, .Hkv = 2, .D = 8});
  add({.name = "mqa_causal", .B = 1, .Sq = 50, .Sk = 50, .Hq = 4, .Hkv = 1, .D = 8, .causal = true});
  add({.name = "window", .B = 1, .Sq = 150, .Sk = 150, .Hq = 2, .Hkv = 1, .D = 8, .wl = 20, .wr = 5});
  add({.name = "window_causal", .B = 1, .Sq = 150, .Sk = 150, .Hq = 2, .Hkv = 2, .D = 8, .causal = true, .wl = 70});
  add({.name = "alibi_causal", .B = 1, .Sq = 80, .Sk = 80, .Hq = 4, .Hkv = 2, .D = 8, .causal = true, .alibi = true});
  add({.name = "alibi", .B = 1, .Sq = 33, .Sk = 47, .Hq = 2, .Hkv = 2, .D = 8, .alibi = true});
  add({.name = "docs_causal", .B = 2, .Sq = 90, .Sk = 90, .Hq = 2, .Hkv = 1, .D = 8, .causal = true, .docs = Docs::regular});
  add({.name = "docs", .B = 2, .Sq = 60, .Sk = 75, .Hq = 2, .Hkv = 2, .D = 8, .qoff = 7, .koff = 3, .docs = Docs::regular});
  add({.name = "docs_random_causal", .B = 2, .Sq = 200, .Sk = 200, .Hq = 2, .Hkv = 1, .D = 8, .causal = true,
       .docs = Docs::random});
  add({.name = "docs_single", .B = 1, .Sq = 70, .Sk = 70, .Hq = 2, .Hkv = 2, .D = 8, .causal = true,
       .docs = Docs::single});
  add({.name = "docs_unsorted", .B = 2, .Sq = 90, .Sk = 90, .Hq = 2, .Hkv = 1, .D = 8, .causal = true,
       .docs = Docs::unsorted});
  add({.name = "offsets_causal", .B = 1, .Sq = 70, .Sk = 90, .Hq = 2, .Hkv = 2, .D = 8, .causal = true, .qoff = 100,
       .koff = 40});
  add({.name = "keys_before", .B = 1, .Sq = 50, .Sk = 64, .Hq = 2, .Hkv = 1, .D = 8, .causal = true, .qoff = 200});
  add({.name = "keys_after", .B = 1, .Sq = 50, .Sk = 64, .Hq = 2, .Hkv = 1, .D = 8, .causal = true, .koff = 500});
  add({.name = "keys_outside_window", .B = 1, .Sq = 30, .Sk = 30, .Hq = 2, .Hkv = 2, .D = 8, .wl = 10, .wr = 10,
       .qoff = 100});
  add({.name = "len1", .B = 2, .Sq = 1, .Sk = 1, .Hq = 2, .Hkv = 1, .D = 8, .causal = true});
  add({.name = "len17", .B = 1, .Sq = 17, .Sk = 17, .Hq = 2, .Hkv = 2, .D = 24, .causal = true});
  add({.name = "len1000", .B = 1, .Sq = 1000, .Sk = 1000, .Hq = 2, .Hkv = 1, .D = 16, .causal = true});
  add({.name = "sq17_sk100", .B = 1, .Sq = 17, .Sk = 100, .Hq = 2, .Hkv = 2, .D = 8, .causal = true, .qoff = 83});
  add({.name = "sq100_sk17", .B = 1, .Sq = 100, .Sk = 17, .Hq = 2, .Hkv = 2, .D = 8});
  add({.name = "scale", .B = 1, .Sq = 20, .Sk = 30, .Hq = 1, .Hkv = 1, .D = 8, .scale = 0.7f});
  add({.name = "everything", .B = 2, .Sq = 77, .Sk = 130, .Hq = 4, .Hkv = 2, .D = 8, .causal = true, .wl = 60,
       .wr = 3, .qoff = 60, .koff = 0, .alibi = true, .docs = Docs::regular});
  return v;
}

class FlashCpu : public testing::TestWithParam<FlashCase> {};

TEST_P(FlashCpu, MatchesNaiveForwardAndBackward) {
  const FlashCase& c = GetParam();
  const FlashInputs in = make_flash_inputs(c, 11);
  NaiveAttention ref(c, in);
  Tensor ro, rlse;
  ref.forward(ro, rlse);
  const FlashGrads rg = ref.backward(ro, rlse, in.dout);
  for (DType dt : {DType::f64, DType::f32}) {
    const std::string what = c.name + " " + std::string(dtype_name(dt));
    const double ftol = dt == DType::f64 ? 1e-12 : 2e-5, btol = dt == DType::f64 ? 1e-11 : 1e-4;
    const Tensor q = in.q.to(dt), k = in.k.to(dt), v = in.v.to(dt), dout = in.dout.to(dt);
    const auto out = attn::flash_forward(q, k, v, in.opts);
    EXPECT_EQ(out.o.dtype(), dt);
    EXPECT_EQ(out.lse.dtype(), dt);
    expect_no_nan(out.o, what + " o");
    EXPECT_LE(rel_error(out.o, ro), ftol) << what;
    expect_lse_close(out.lse, rlse, ftol, what);
    const auto g = attn::flash_backward(q, k, v, out.o, out.lse, dout, in.opts);
    for (auto [name, got, want] : {std::tuple{"dq", &g.dq, &rg.dq}, std::tuple{"dk", &g.dk, &rg.dk},
                                   std::tuple{"dv", &g.dv, &rg.dv}}) {
      EXPECT_EQ(got->dtype(), dt) << what << " " << name;
      expect_no_nan(*got, what + " " + name);
      // All-zero references (everything masked) compare absolutely.
      if (max_abs_diff(*want, Tensor::zeros(want->shape(), DType::f64)) == 0)
        EXPECT_EQ(max_abs_diff(*got, *want), 0.0) << what << " " << name;
      else
        EXPECT_LE(rel_error(*got, *want), btol) << what << " " << name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Options, FlashCpu, testing::ValuesIn(option_cases()), case_name);

// fp64 central differences of L = sum(o * W) against the analytic backward (dout = W).
class FlashGradCheck : public testing::TestWithParam<FlashCase> {};

TEST_P(FlashGradCheck, FiniteDifferences) {
  const FlashCase& c = GetParam();
  FlashInputs in = make_flash_inputs(c, 23);
  const auto out = attn::flash_forward(in.q, in.k, in.v, in.opts);
  const auto g = attn::flash_backward(in.q, in.k, in.v, out.o, out.lse, in.dout, in.opts);
  const auto w = in.dout.to_vector();
  auto loss = [&] {
    const auto o = attn::flash_forward(in.q, in.k, in.v, in.opts).o.to_vector();
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * w[i];
    return s;
  };
  expect_grad_close(loss, in.q, g.dq, "dq", 1e-6, 1e-7);
  expect_grad_close(loss, in.k, g.dk, "dk", 1e-6, 1e-7);
  expect_grad_close(loss, in.v, g.dv, "dv", 1e-6, 1e-7);
}

INSTANTIATE_TEST_SUITE_P(
    Small, FlashGradCheck,
    testing::Values(FlashCase{.name = "plain", .B = 1, .Sq = 6, .Sk = 9, .Hq = 2, .Hkv = 2, .D = 4},
                    FlashCase{.name = "causal_gqa", .B = 1, .Sq = 7, .Sk = 7, .Hq = 4, .Hkv = 2, .D = 4, .causal = true},
                    FlashCase{.name = "all_options", .B = 2, .Sq = 9, .Sk = 14, .Hq = 2, .Hkv = 1, .D = 4,
                              .causal = true, .wl = 8, .wr = 2, .qoff = 5, .koff = 1, .alibi = true, .docs = Docs::regular}),
    case_name);

// Rows with no visible key: output 0, lse -inf, zero gradients, never NaN.
TEST(FlashCpuMasked, FullyMaskedRowsGiveZeroAndNegInf) {
  // Keys start at global position 14, the first token of a document: query rows 0..13 belong
  // to earlier documents and see no key.
  FlashCase c{.name = "masked", .B = 1, .Sq = 40, .Sk = 40, .Hq = 2, .Hkv = 1, .D = 8, .koff = 14, .docs = Docs::regular};
  ASSERT_NE(doc_id(Docs::regular, 0, 13), doc_id(Docs::regular, 0, 14));
  const FlashInputs in = make_flash_inputs(c, 5);
  for (DType dt : {DType::f64, DType::f32}) {
    const Tensor q = in.q.to(dt), k = in.k.to(dt), v = in.v.to(dt), dout = in.dout.to(dt);
    const auto out = attn::flash_forward(q, k, v, in.opts);
    const auto o = out.o.to_vector(), lse = out.lse.to_vector();
    int64_t masked_rows = 0;
    for (int h = 0; h < c.Hq; ++h)
      for (int64_t i = 0; i < c.Sq; ++i) {
        const bool masked = i < c.koff;
        ASSERT_FALSE(std::isnan(lse[h * c.Sq + i]));
        if (!masked) continue;
        ++masked_rows;
        EXPECT_EQ(lse[h * c.Sq + i], -INFINITY) << i;
        for (int d = 0; d < c.D; ++d) EXPECT_EQ(o[(i * c.Hq + h) * c.D + d], 0.0);
      }
    EXPECT_EQ(masked_rows, c.Hq * c.koff);
    expect_no_nan(out.o, "o");
    // Backward, also in accumulate mode onto existing values.
    const auto g = attn::flash_backward(q, k, v, out.o, out.lse, dout, in.opts);
    expect_no_nan(g.dq, "dq");
    expect_no_nan(g.dk, "dk");
    expect_no_nan(g.dv, "dv");
    const auto dq = g.dq.to_vector();
    for (int64_t i = 0; i < c.koff; ++i)
      for (int h = 0; h < c.Hq; ++h)
        for (int d = 0; d < c.D; ++d) EXPECT_EQ(dq[(i * c.Hq + h) * c.D + d], 0.0);
    // Everything masked (keys entirely in the future under causal).
    attn::FlashOptions future = in.opts;
    future.q_doc_ids = future.k_doc_ids = Tensor();
    future.mask = attn::Mask::causal;
    future.k_offset = 1000;
    const auto fo = attn::flash_forward(q, k, v, future);
    for (double x : fo.lse.to_vector()) EXPECT_EQ(x, -INFINITY);
    EXPECT_EQ(max_abs_diff(fo.o, Tensor::zeros(fo.o.shape(), DType::f64)), 0.0);
    FlashGrads acc{Tensor::full(q.shape(), 1.5, dt), Tensor::full(k.shape(), 2.5, dt), Tensor::full(k.shape(), 3.5, dt)};
    attn::flash_backward(q, k, v, fo.o, fo.lse, dout, future, GradMode::accumulate, acc);
    for (double x : acc.dq.to_vector()) EXPECT_EQ(x, 1.5);
    for (double x : acc.dk.to_vector()) EXPECT_EQ(x, 2.5);
    for (double x : acc.dv.to_vector()) EXPECT_EQ(x, 3.5);
  }
}

// Attention over keys split into blocks (strided key slices with the block's k_offset),
// merged by lse, equals attention over all keys; the backward of each block with the
// global o/lse, accumulated, equals the full backward.
class FlashMerge : public testing::TestWithParam<std::tuple<FlashCase, int>> {};

TEST_P(FlashMerge, SplitKeysMergeExactly) {
  const auto& [c, nblocks] = GetParam();
  const FlashInputs in = make_flash_inputs(c, 31);
  const auto full = attn::flash_forward(in.q, in.k, in.v, in.opts);
  const auto gfull = attn::flash_backward(in.q, in.k, in.v, full.o, full.lse, in.dout, in.opts);
  std::vector<int64_t> cuts{0};
  for (int i = 1; i < nblocks; ++i) cuts.push_back(c.Sk * i / nblocks + (i % 2 ? 3 : -5));
  cuts.push_back(c.Sk);

  std::vector<double> m_o(full.o.numel(), 0.0), m_lse(full.lse.numel(), -INFINITY);
  std::vector<attn::FlashOutput> parts;
  for (int bi = 0; bi < nblocks; ++bi) {
    attn::FlashOptions o = in.opts;
    o.k_offset = c.koff + cuts[bi];
    o.out_dtype = attn::OutputDType::f32;
    if (c.docs != Docs::none) o.k_doc_ids = in.opts.k_doc_ids.slice(1, cuts[bi], cuts[bi + 1]);
    parts.push_back(attn::flash_forward(in.q, in.k.slice(1, cuts[bi], cuts[bi + 1]),
                                        in.v.slice(1, cuts[bi], cuts[bi + 1]), o));
    const auto lb = parts.back().lse.to_vector();
    for (size_t r = 0; r < lb.size(); ++r) {  // log(exp(a) + exp(b)), -inf aware
      const double hi = std::max(m_lse[r], lb[r]), lo = std::min(m_lse[r], lb[r]);
      if (lo != -INFINITY) m_lse[r] = hi + std::log1p(std::exp(lo - hi));
      else m_lse[r] = hi;
    }
  }
  for (const auto& part : parts) {
    const auto ob = part.o.to_vector(), lb = part.lse.to_vector();
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t i = 0; i < c.Sq; ++i)
        for (int h = 0; h < c.Hq; ++h) {
          const int64_t r = (b * c.Hq + h) * c.Sq + i;
          if (lb[r] == -INFINITY) continue;
          const double wgt = std::exp(lb[r] - m_lse[r]);
          for (int d = 0; d < c.D; ++d) m_o[((b * c.Sq + i) * c.Hq + h) * c.D + d] += wgt * ob[((b * c.Sq + i) * c.Hq + h) * c.D + d];
        }
  }
  EXPECT_LE(rel_error(Tensor::from_vector(full.o.shape(), m_o, DType::f64), full.o), 1e-12);
  expect_lse_close(Tensor::from_vector(full.lse.shape(), m_lse, DType::f64), full.lse, 1e-12, "merged");

  FlashGrads acc{Tensor::zeros(in.q.shape(), DType::f64), Tensor::zeros(in.k.shape(), DType::f64),
                 Tensor::zeros(in.k.shape(), DType::f64)};
  for (int bi = 0; bi < nblocks; ++bi) {
    attn::FlashOptions o = in.opts;
    o.k_offset = c.koff + cuts[bi];
    if (c.docs != Docs::none) o.k_doc_ids = in.opts.k_doc_ids.slice(1, cuts[bi], cuts[bi + 1]);
    FlashGrads into{acc.dq, acc.dk.slice(1, cuts[bi], cuts[bi + 1]), acc.dv.slice(1, cuts[bi], cuts[bi + 1])};
    attn::flash_backward(in.q, in.k.slice(1, cuts[bi], cuts[bi + 1]), in.v.slice(1, cuts[bi], cuts[bi + 1]), full.o,
                         full.lse, in.dout, o, GradMode::accumulate, into);
  }
  EXPECT_LE(rel_error(acc.dq, gfull.dq), 1e-12);
  EXPECT_LE(rel_error(acc.dk, gfull.dk), 1e-12);
  EXPECT_LE(rel_error(acc.dv, gfull.dv), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(
    Blocks, FlashMerge,
    testing::Combine(testing::Values(FlashCase{.name = "causal_gqa", .B = 2, .Sq = 90, .Sk = 140, .Hq = 4, .Hkv = 2,
                                               .D = 8, .causal = true, .qoff = 50},
                                     FlashCase{.name = "docs_alibi_window", .B = 2, .Sq = 70, .Sk = 100, .Hq = 2,
                                               .Hkv = 1, .D = 8, .wl = 40, .wr = 20, .qoff = 10, .alibi = true,
                                               .docs = Docs::regular}),
                     testing::Values(2, 3)),
    [](const auto& info) {
      return std::get<0>(info.param).name + "_" + std::to_string(std::get<1>(info.param)) + "blocks";
    });

TEST(FlashCpuErrors, RejectsBadArguments) {
  FlashCase c{.name = "e", .Hq = 3, .Hkv = 2};
  const FlashInputs in = make_flash_inputs(c, 1);
  EXPECT_THROW(attn::flash_forward(in.q, in.k, in.v, {}), Error);  // 3 % 2 != 0
  FlashCase ok{.name = "ok"};
  FlashInputs good = make_flash_inputs(ok, 1);
  attn::FlashOptions half_docs;
  half_docs.q_doc_ids = Tensor::zeros({ok.B, ok.Sq}, DType::i32);
  EXPECT_THROW(attn::flash_forward(good.q, good.k, good.v, half_docs), Error);
  EXPECT_THROW(attn::flash_forward(good.q.to(DType::bf16), good.k.to(DType::bf16), good.v.to(DType::bf16), {}), Error);
  const auto out = attn::flash_forward(good.q, good.k, good.v, {});
  EXPECT_THROW(attn::flash_backward(good.q, good.k, good.v, out.o, out.lse, good.dout, {}, GradMode::accumulate), Error);
}

TEST(FlashBackend, NamesParseAndCudnnNeedsCuda) {
  for (auto b : {attn::AttnBackend::automatic, attn::AttnBackend::cudnn, attn::AttnBackend::lctx})
    EXPECT_EQ(attn::parse_attn_backend(attn::attn_backend_name(b)), b);
  EXPECT_THROW(attn::parse_attn_backend("cuDNN"), Error);
  FlashCase c{.name = "cpu"};
  const FlashInputs in = make_flash_inputs(c, 2);
  attn::FlashOptions o;
  o.backend = attn::AttnBackend::cudnn;
  try {
    attn::flash_forward(in.q, in.k, in.v, o);
    ADD_FAILURE() << "a forced cudnn backend on CPU tensors must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cudnn needs CUDA tensors"), std::string::npos) << e.what();
  }
  o.backend = attn::AttnBackend::lctx;  // CPU runs the reference whatever the CUDA choice
  EXPECT_NO_THROW(attn::flash_forward(in.q, in.k, in.v, o));
}

}  // namespace
