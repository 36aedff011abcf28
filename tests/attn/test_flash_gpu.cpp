// CUDA flash attention (bf16, f16; head_dim 64 and 128) against the CPU reference run in
// f32 on the same rounded inputs, for every option, forward and backward, both output
// dtypes and both gradient modes; once with lctx's kernels and once with cuDNN (forced where
// cuDNN supports the options, where it does not: a forced cuDNN is an error and the automatic
// choice falls back to lctx's kernels).
#include <gtest/gtest.h>

#include "attn/flash.h"
#include "attn/flash_traits.cuh"
#include "common/check.h"
#include "flash_reference.h"

using namespace lctx;
using namespace lctx::test;
using attn::FlashGrads;
using attn::GradMode;

namespace {

struct GpuCase {
  FlashCase c;
  DType dt;
  attn::AttnBackend backend;
};

// The options cuDNN's fused attention covers here: no documents (these cases give ids without
// FlashOptions::documents), and every query row keeps a visible key.
bool cudnn_supports(const FlashCase& c) {
  const int64_t delta = c.qoff - c.koff;
  if (c.docs != Docs::none) return false;
  if (c.causal && delta < 0) return false;
  if (!c.causal && c.wr >= 0 && delta + c.wr < 0) return false;
  if (c.wl >= 0 && (c.Sq - 1) + delta - c.wl > c.Sk - 1) return false;
  return true;
}

std::vector<GpuCase> gpu_cases() {
  std::vector<FlashCase> base;
  auto add = [&](FlashCase c) { base.push_back(c); };
  add({.name = "plain", .B = 2, .Sq = 200, .Sk = 200, .Hq = 2, .Hkv = 2});
  add({.name = "causal", .B = 1, .Sq = 300, .Sk = 300, .Hq = 2, .Hkv = 2, .causal = true});
  add({.name = "gqa2_causal", .B = 1, .Sq = 257, .Sk = 257, .Hq = 4, .Hkv = 2, .causal = true});
  add({.name = "gqa8", .B = 1, .Sq = 100, .Sk = 190, .Hq = 8, .Hkv = 1});
  add({.name = "mqa_causal", .B = 1, .Sq = 130, .Sk = 130, .Hq = 4, .Hkv = 1, .causal = true});
  add({.name = "window", .B = 1, .Sq = 400, .Sk = 400, .Hq = 2, .Hkv = 1, .wl = 100, .wr = 20});
  add({.name = "window_causal", .B = 1, .Sq = 400, .Sk = 400, .Hq = 2, .Hkv = 2, .causal = true, .wl = 150});
  add({.name = "alibi_causal", .B = 1, .Sq = 200, .Sk = 200, .Hq = 4, .Hkv = 2, .causal = true, .alibi = true});
  add({.name = "docs_causal", .B = 2, .Sq = 190, .Sk = 190, .Hq = 2, .Hkv = 1, .causal = true, .docs = Docs::regular});
  add({.name = "docs_offsets", .B = 2, .Sq = 150, .Sk = 170, .Hq = 2, .Hkv = 2, .qoff = 7, .koff = 3, .docs = Docs::regular});
  add({.name = "docs_random_causal", .B = 2, .Sq = 700, .Sk = 700, .Hq = 2, .Hkv = 1, .causal = true,
       .docs = Docs::random});
  add({.name = "docs_random_offsets", .B = 2, .Sq = 300, .Sk = 450, .Hq = 4, .Hkv = 2, .causal = true, .qoff = 500,
       .koff = 100, .docs = Docs::random});
  add({.name = "docs_random_alibi", .B = 1, .Sq = 520, .Sk = 520, .Hq = 2, .Hkv = 2, .causal = true, .alibi = true,
       .docs = Docs::random});
  add({.name = "docs_single", .B = 1, .Sq = 300, .Sk = 300, .Hq = 2, .Hkv = 1, .causal = true, .docs = Docs::single});
  add({.name = "docs_unsorted", .B = 2, .Sq = 260, .Sk = 260, .Hq = 2, .Hkv = 1, .causal = true,
       .docs = Docs::unsorted});
  add({.name = "offsets_causal", .B = 1, .Sq = 170, .Sk = 190, .Hq = 2, .Hkv = 2, .causal = true, .qoff = 300,
       .koff = 140});
  add({.name = "keys_before", .B = 1, .Sq = 128, .Sk = 192, .Hq = 2, .Hkv = 1, .causal = true, .qoff = 400});
  add({.name = "keys_after", .B = 1, .Sq = 100, .Sk = 64, .Hq = 2, .Hkv = 1, .causal = true, .koff = 500});
  add({.name = "masked_rows", .B = 1, .Sq = 100, .Sk = 100, .Hq = 2, .Hkv = 1, .koff = 14, .docs = Docs::regular});
  add({.name = "len1", .B = 2, .Sq = 1, .Sk = 1, .Hq = 2, .Hkv = 1, .causal = true});
  add({.name = "len17", .B = 1, .Sq = 17, .Sk = 17, .Hq = 2, .Hkv = 2, .causal = true});
  add({.name = "len1000", .B = 1, .Sq = 1000, .Sk = 1000, .Hq = 2, .Hkv = 1, .causal = true});
  add({.name = "len4097", .B = 1, .Sq = 4097, .Sk = 4097, .Hq = 1, .Hkv = 1, .causal = true});
  add({.name = "sq17_sk300", .B = 1, .Sq = 17, .Sk = 300, .Hq = 2, .Hkv = 2, .causal = true, .qoff = 283});
  add({.name = "sq300_sk17", .B = 1, .Sq = 300, .Sk = 17, .Hq = 2, .Hkv = 2});
  // One or two queries over more than a 128-key tile, GQA (cross-attention's runs over many
  // compressed rows: nsa with compress_block 1 gave NaN gradients on the GPU).
  add({.name = "sq1_sk150", .B = 2, .Sq = 1, .Sk = 150, .Hq = 4, .Hkv = 2});
  add({.name = "sq2_sk190", .B = 2, .Sq = 2, .Sk = 190, .Hq = 4, .Hkv = 2});
  add({.name = "everything", .B = 2, .Sq = 177, .Sk = 230, .Hq = 4, .Hkv = 2, .causal = true, .wl = 120, .wr = 3,
       .qoff = 60, .alibi = true, .docs = Docs::regular});
  std::vector<GpuCase> v;
  for (attn::AttnBackend be : {attn::AttnBackend::lctx, attn::AttnBackend::cudnn})
    for (int d : {64, 128})
      for (DType dt : {DType::bf16, DType::f16})
        for (FlashCase c : base) {
          if (c.name == "len4097" && (d == 64 || dt == DType::f16)) continue;  // keep the CPU reference time modest
          c.D = d;
          c.name += "_d" + std::to_string(d) + "_" + std::string(dtype_name(dt)) + "_" +
                    std::string(attn::attn_backend_name(be));
          v.push_back({c, dt, be});
        }
  return v;
}

class FlashGpu : public testing::TestWithParam<GpuCase> {};

void expect_grad_match(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  expect_no_nan(got, what);
  // All-zero references (everything masked, or one key per row: dS = 0) compare absolutely.
  if (max_abs_diff(want, Tensor::zeros(want.shape(), DType::f32)) == 0)
    EXPECT_LE(max_abs_diff(got, want), 1e-5) << what;
  else
    EXPECT_LE(rel_error(got, want), tol) << what;
}

TEST_P(FlashGpu, MatchesCpuReference) {
  LCTX_REQUIRE_GPU();
  const auto& [c, dt, backend] = GetParam();
  FlashInputs in = make_flash_inputs(c, 7);
  // The CPU reference sees exactly the rounded inputs the GPU sees.
  const Tensor q = in.q.to(dt), k = in.k.to(dt), v = in.v.to(dt), dout = in.dout.to(dt);
  const Tensor qf = q.to(DType::f32), kf = k.to(DType::f32), vf = v.to(DType::f32), dof = dout.to(DType::f32);
  const auto ref = attn::flash_forward(qf, kf, vf, in.opts);
  const auto rg = attn::flash_backward(qf, kf, vf, ref.o, ref.lse, dof, in.opts);

  attn::FlashOptions go = in.opts;
  const Device gpu = Device::cuda();
  if (go.alibi_slopes.defined()) go.alibi_slopes = go.alibi_slopes.to(gpu);
  if (go.q_doc_ids.defined()) {
    go.q_doc_ids = go.q_doc_ids.to(gpu);
    go.k_doc_ids = go.k_doc_ids.to(gpu);
  }
  const Tensor qd = q.to(gpu), kd = k.to(gpu), vd = v.to(gpu), dod = dout.to(gpu);
  const double ftol = dt == DType::bf16 ? 1.5e-2 : 4e-3, btol = dt == DType::bf16 ? 3e-2 : 1e-2;
  go.backend = backend;
  if (backend == attn::AttnBackend::cudnn && !cudnn_supports(c)) {
    EXPECT_THROW(attn::flash_forward(qd, kd, vd, go), Error);
    go.backend = attn::AttnBackend::automatic;  // falls back to lctx's kernels
  }

  const auto out = attn::flash_forward(qd, kd, vd, go);
  EXPECT_EQ(out.o.dtype(), dt);
  expect_no_nan(out.o, "o");
  EXPECT_LE(rel_error(out.o, ref.o), ftol);
  expect_lse_close(out.lse, ref.lse, 2e-3, "lse");
  go.out_dtype = attn::OutputDType::f32;
  const auto out32 = attn::flash_forward(qd, kd, vd, go);
  go.out_dtype = attn::OutputDType::input;
  EXPECT_EQ(out32.o.dtype(), DType::f32);
  EXPECT_LE(rel_error(out32.o, ref.o), ftol / 2);
  expect_lse_close(out32.lse, ref.lse, 2e-3, "lse f32");

  // Overwrite mode with the GPU's own o/lse.
  const auto g = attn::flash_backward(qd, kd, vd, out.o, out.lse, dod, go);
  EXPECT_EQ(g.dq.dtype(), dt);
  expect_grad_match(g.dq, rg.dq, btol, "dq");
  expect_grad_match(g.dk, rg.dk, btol, "dk");
  expect_grad_match(g.dv, rg.dv, btol, "dv");

  // Accumulate mode into fp32 tensors holding earlier values, with the f32 o (ring style).
  FlashGrads acc{Tensor::empty(q.shape(), DType::f32, gpu), Tensor::empty(k.shape(), DType::f32, gpu),
                 Tensor::empty(k.shape(), DType::f32, gpu)};
  rng_normal(acc.dq, 1, 0, 0.0, 1e-3, {});
  rng_normal(acc.dk, 2, 0, 0.0, 1e-3, {});
  rng_normal(acc.dv, 3, 0, 0.0, 1e-3, {});
  const Tensor dq0 = acc.dq.to(Device::cpu()), dk0 = acc.dk.to(Device::cpu()), dv0 = acc.dv.to(Device::cpu());
  attn::flash_backward(qd, kd, vd, out32.o, out32.lse, dod, go, GradMode::accumulate, acc);
  FlashGrads want{dq0.clone(), dk0.clone(), dv0.clone()};
  attn::flash_backward(qf, kf, vf, ref.o, ref.lse, dof, in.opts, GradMode::accumulate, want);
  EXPECT_LE(rel_error(acc.dq, want.dq), btol) << "dq accumulate";
  EXPECT_LE(rel_error(acc.dk, want.dk), btol) << "dk accumulate";
  EXPECT_LE(rel_error(acc.dv, want.dv), btol) << "dv accumulate";
}

INSTANTIATE_TEST_SUITE_P(Options, FlashGpu, testing::ValuesIn(gpu_cases()),
                         [](const auto& info) { return info.param.c.name; });

// Ring attention's backward: each key block's gradient from the *global* o and lse, added
// into fp32 accumulators, sums to the gradient over all keys (cuDNN and lctx blocks alike).
TEST(FlashGpuBlocks, GlobalLseBackwardOverKeyBlocksSumsToFull) {
  LCTX_REQUIRE_GPU();
  for (bool causal : {false, true}) {
    FlashCase c{.name = "blocks", .B = 1, .Sq = 384, .Sk = 384, .Hq = 4, .Hkv = 2, .D = 128, .causal = causal};
    FlashInputs in = make_flash_inputs(c, 11);
    const Device gpu = Device::cuda();
    const Tensor q = in.q.to(DType::bf16).to(gpu), k = in.k.to(DType::bf16).to(gpu), v = in.v.to(DType::bf16).to(gpu),
                 dout = in.dout.to(DType::bf16).to(gpu);
    attn::FlashOptions opts = in.opts;
    opts.backend = attn::AttnBackend::cudnn;
    const auto full = attn::flash_forward(q, k, v, opts);
    opts.out_dtype = attn::OutputDType::f32;
    const auto want = attn::flash_backward(q, k, v, full.o, full.lse, dout, opts, GradMode::overwrite,
                                           {Tensor::empty(q.shape(), DType::f32, gpu),
                                            Tensor::empty(k.shape(), DType::f32, gpu),
                                            Tensor::empty(k.shape(), DType::f32, gpu)});
    FlashGrads acc{Tensor::zeros(q.shape(), DType::f32, gpu), Tensor::zeros(k.shape(), DType::f32, gpu),
                   Tensor::zeros(k.shape(), DType::f32, gpu)};
    // The second block starts at key 128: causal rows 0..127 see none of it (lctx's kernels run
    // that block under the automatic choice).
    opts.backend = attn::AttnBackend::automatic;
    for (auto [k0, k1] : {std::pair<int64_t, int64_t>{0, 128}, {128, 384}}) {
      attn::FlashOptions bo = opts;
      bo.k_offset = k0;
      attn::flash_backward(q, k.slice(1, k0, k1), v.slice(1, k0, k1), full.o, full.lse, dout, bo,
                           GradMode::accumulate, {acc.dq, acc.dk.slice(1, k0, k1), acc.dv.slice(1, k0, k1)});
    }
    EXPECT_LE(rel_error(acc.dq, want.dq), 2e-2) << "dq causal=" << causal;
    EXPECT_LE(rel_error(acc.dk, want.dk), 2e-2) << "dk causal=" << causal;
    EXPECT_LE(rel_error(acc.dv, want.dv), 2e-2) << "dv causal=" << causal;
  }
}

// Packed documents: the kernels visit exactly the tiles that hold a visible pair (counted by
// FlashOptions::tile_counter), far fewer than plain causal, and match the reference.
TEST(FlashGpuDocuments, VisitsOnlyTilesThatShareADocument) {
  LCTX_REQUIRE_GPU();
  using Fwd = attn::FlashFwdTraits<uint16_t, 128>;
  using Bwd = attn::FlashBwdTraits<uint16_t, 128>;
  int64_t causal_fwd = 0;  // tiles of plain causal (the first case)
  for (Docs docs : {Docs::none, Docs::regular, Docs::random}) {
    const FlashCase c{.name = "count", .B = 2, .Sq = 1500, .Sk = 1500, .Hq = 4, .Hkv = 2, .D = 128, .causal = true,
                      .docs = docs};
    FlashInputs in = make_flash_inputs(c, 3);
    const NaiveAttention ref(c, in);
    // Tiles (rows [a0, a1) x [b0, b1)) with a visible pair, summed over batch rows.
    auto tiles_with_pairs = [&](int64_t bm, int64_t bn) {
      int64_t n = 0;
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t m0 = 0; m0 < c.Sq; m0 += bm)
          for (int64_t n0 = 0; n0 < c.Sk; n0 += bn) {
            bool any = false;
            for (int64_t i = m0; i < std::min(m0 + bm, c.Sq) && !any; ++i)
              for (int64_t j = n0; j < std::min(n0 + bn, c.Sk) && !any; ++j) any = ref.visible(b, i, j);
            n += any;
          }
      return n;
    };
    const Device gpu = Device::cuda();
    attn::FlashOptions go = in.opts;
    go.backend = attn::AttnBackend::lctx;
    if (go.q_doc_ids.defined()) {
      go.q_doc_ids = go.q_doc_ids.to(gpu);
      go.k_doc_ids = go.k_doc_ids.to(gpu);
    }
    go.tile_counter = Tensor::zeros({1}, DType::i64, gpu);
    const Tensor q = in.q.to(DType::bf16).to(gpu), k = in.k.to(DType::bf16).to(gpu), v = in.v.to(DType::bf16).to(gpu),
                 dout = in.dout.to(DType::bf16).to(gpu);
    const auto out = attn::flash_forward(q, k, v, go);
    const int64_t fwd = go.tile_counter.to(Device::cpu()).to_vector()[0];
    EXPECT_EQ(fwd, c.Hq * tiles_with_pairs(Fwd::kBlockM, Fwd::kBlockN)) << "forward tiles";
    go.tile_counter = Tensor::zeros({1}, DType::i64, gpu);
    attn::flash_backward(q, k, v, out.o, out.lse, dout, go);
    const int64_t bwd = go.tile_counter.to(Device::cpu()).to_vector()[0];
    EXPECT_EQ(bwd, c.Hq * tiles_with_pairs(Bwd::kBlockM, Bwd::kBlockN)) << "backward tiles";
    if (docs == Docs::none) causal_fwd = fwd;
    if (docs == Docs::regular) {
      EXPECT_LT(2 * fwd, causal_fwd) << "13-token documents skip most causal tiles";
    }
    Tensor ro, rlse;
    ref.forward(ro, rlse);
    EXPECT_LE(rel_error(out.o, ro), 1.5e-2);
  }
}

TEST(FlashGpuErrors, RejectsF32AndOddHeadDim) {
  LCTX_REQUIRE_GPU();
  const Tensor q = Tensor::zeros({1, 8, 2, 64}, DType::f32, Device::cuda());
  EXPECT_THROW(attn::flash_forward(q, q, q, {}), Error);
  const Tensor q96 = Tensor::zeros({1, 8, 2, 96}, DType::bf16, Device::cuda());
  EXPECT_THROW(attn::flash_forward(q96, q96, q96, {}), Error);
}

}  // namespace
