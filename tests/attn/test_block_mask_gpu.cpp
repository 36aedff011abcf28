// Block masks on lctx's CUDA flash kernels (bf16/f16, head_dim 64 and 128) and CUDA strided
// attention (strided and global far keys), against the f64 CPU reference by the 2x-bf16 rule: the GPU error against the
// reference on the exact inputs must be at most twice the error of the reference itself run on
// the inputs rounded once to the GPU dtype (plus 1e-6 for outputs that are exact). The tile
// counter equals the tiles the mask lists at the kernels' tile shapes (forward and backward:
// per query head; for a plain window, which runs as the band rule, the band visits the same
// tiles), and cuDNN runs no block mask but the plain window.
#include <gtest/gtest.h>

#include "attn/block_mask.h"
#include "attn/flash.h"
#include "attn/flash_traits.cuh"
#include "attn/strided_attention.h"
#include "block_mask_cases.h"
#include "common/check.h"

using namespace lctx;
using namespace lctx::test;

namespace {

struct GpuPattern {
  PatternCase c;
  int D;
  DType dt;
};
void PrintTo(const GpuPattern& g, std::ostream* os) { *os << g.c.name << "_d" << g.D << "_" << dtype_name(g.dt); }

std::vector<GpuPattern> gpu_patterns() {
  std::vector<GpuPattern> v;
  for (const PatternCase& c : pattern_cases())
    for (int d : {64, 128}) v.push_back({c, d, DType::bf16});
  for (const PatternCase& c : pattern_cases())
    if (c.name == "window_global" || c.name == "strided") v.push_back({c, 128, DType::f16});
  return v;
}

Qkv rounded(const Qkv& x, DType dt) {
  return {x.q.to(dt).to(DType::f64), x.k.to(dt).to(DType::f64), x.v.to(dt).to(DType::f64),
          x.dout.to(dt).to(DType::f64)};
}

void expect_2x_baseline(const Tensor& gpu, const Tensor& ref, const Tensor& base, const std::string& what) {
  const double err = rel_error(gpu, ref), allowed = 2 * rel_error(base, ref) + 1e-6;
  EXPECT_LE(err, allowed) << what << ": GPU error " << err << ", bf16 baseline " << rel_error(base, ref);
}

struct Results {
  Tensor o, lse, dq, dk, dv;
};

template <class F, class B>
Results run_both(const Qkv& x, F&& forward, B&& backward) {
  const auto out = forward(x.q, x.k, x.v);
  const auto g = backward(x.q, x.k, x.v, out.o, out.lse, x.dout);
  return {out.o, out.lse, g.dq, g.dk, g.dv};
}

class BlockMaskGpu : public testing::TestWithParam<GpuPattern> {};

TEST_P(BlockMaskGpu, MatchesCpuReference) {
  LCTX_REQUIRE_GPU();
  const auto& [c, D, dt] = GetParam();
  const Device gpu = Device::cuda();
  const int64_t B = 2, Hq = 4, Hkv = 2;
  const Qkv x = random_qkv(B, c.mask->seq_len(), Hq, Hkv, D, 3);
  attn::FlashOptions opts;
  opts.block_mask = c.mask;
  opts.backend = attn::AttnBackend::lctx;
  auto fwd = [&](const Tensor& q, const Tensor& k, const Tensor& v) { return attn::flash_forward(q, k, v, opts); };
  auto bwd = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                 const Tensor& dout) { return attn::flash_backward(q, k, v, o, lse, dout, opts); };
  const Results ref = run_both(x, fwd, bwd), base = run_both(rounded(x, dt), fwd, bwd);

  const Tensor q = x.q.to(dt).to(gpu), k = x.k.to(dt).to(gpu), v = x.v.to(dt).to(gpu), dout = x.dout.to(dt).to(gpu);
  opts.tile_counter = Tensor::zeros({1}, DType::i64, gpu);
  const auto out = attn::flash_forward(q, k, v, opts);
  const int64_t fwd_tiles = static_cast<int64_t>(opts.tile_counter.item());
  opts.tile_counter.zero();
  const auto g = attn::flash_backward(q, k, v, out.o, out.lse, dout, opts);
  const int64_t bwd_tiles = static_cast<int64_t>(opts.tile_counter.item());

  expect_2x_baseline(out.o, ref.o, base.o, "o");
  expect_2x_baseline(out.lse, ref.lse, base.lse, "lse");
  expect_2x_baseline(g.dq, ref.dq, base.dq, "dq");
  expect_2x_baseline(g.dk, ref.dk, base.dk, "dk");
  expect_2x_baseline(g.dv, ref.dv, base.dv, "dv");

  const int64_t fbm = D == 128 ? attn::FlashFwdTraits<uint16_t, 128>::kBlockM
                               : attn::FlashFwdTraits<uint16_t, 64>::kBlockM;
  const int64_t bbm = D == 128 ? attn::FlashBwdTraits<uint16_t, 128>::kBlockM
                               : attn::FlashBwdTraits<uint16_t, 64>::kBlockM;
  const auto& fl = c.mask->lists(fbm, attn::FlashFwdTraits<uint16_t, 128>::kBlockN, attn::TileOrder::by_query);
  const auto& bl = c.mask->lists(bbm, attn::FlashBwdTraits<uint16_t, 128>::kBlockN, attn::TileOrder::by_key);
  EXPECT_EQ(fwd_tiles, B * Hq * static_cast<int64_t>(fl.entries.size()));
  EXPECT_EQ(bwd_tiles, B * Hq * static_cast<int64_t>(bl.entries.size()));

  // A forced cuDNN cannot run a block mask and the automatic choice runs lctx's kernels, except
  // for a plain window (the band rule), which cuDNN runs.
  const attn::SparsePattern& sp = c.mask->pattern();
  const bool band = sp.stride == 0 && sp.n_global == 0 && sp.random_block == 0;
  attn::FlashOptions co = opts;
  co.tile_counter = Tensor();
  co.backend = attn::AttnBackend::cudnn;
  if (band) {
    const auto oc = attn::flash_forward(q, k, v, co);
    expect_2x_baseline(oc.o, ref.o, base.o, "o (cuDNN band)");
    expect_2x_baseline(attn::flash_backward(q, k, v, oc.o, oc.lse, dout, co).dq, ref.dq, base.dq, "dq (cuDNN band)");
  } else {
    EXPECT_THROW(attn::flash_forward(q, k, v, co), Error);
    co.backend = attn::AttnBackend::automatic;
    EXPECT_EQ(max_abs_diff(attn::flash_forward(q, k, v, co).o, out.o), 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, BlockMaskGpu, testing::ValuesIn(gpu_patterns()),
                         [](const testing::TestParamInfo<GpuPattern>& i) {
                           return i.param.c.name + "_d" + std::to_string(i.param.D) + "_" +
                                  std::string(dtype_name(i.param.dt));
                         });

struct StridedGpuCase {
  std::string name;
  int64_t B, S, Hq, Hkv, D, w, s, g = 0;  // g > 0: global keys instead of the stride
};
void PrintTo(const StridedGpuCase& c, std::ostream* os) { *os << c.name; }

class StridedGpu : public testing::TestWithParam<StridedGpuCase> {};

TEST_P(StridedGpu, MatchesCpuReference) {
  LCTX_REQUIRE_GPU();
  const StridedGpuCase& c = GetParam();
  const Device gpu = Device::cuda();
  const Qkv x = random_qkv(c.B, c.S, c.Hq, c.Hkv, c.D, 9);
  const attn::StridedOptions opts{.window = c.w, .stride = c.s, .n_global = c.g};
  auto fwd = [&](const Tensor& q, const Tensor& k, const Tensor& v) {
    return attn::strided_attention_forward(q, k, v, opts);
  };
  auto bwd = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                 const Tensor& dout) { return attn::strided_attention_backward(q, k, v, o, lse, dout, opts); };
  const Results ref = run_both(x, fwd, bwd), base = run_both(rounded(x, DType::bf16), fwd, bwd);
  const Qkv xd{x.q.to(DType::bf16).to(gpu), x.k.to(DType::bf16).to(gpu), x.v.to(DType::bf16).to(gpu),
               x.dout.to(DType::bf16).to(gpu)};
  const Results got = run_both(xd, fwd, bwd);
  expect_2x_baseline(got.o, ref.o, base.o, "o");
  expect_2x_baseline(got.lse, ref.lse, base.lse, "lse");
  expect_2x_baseline(got.dq, ref.dq, base.dq, "dq");
  expect_2x_baseline(got.dk, ref.dk, base.dk, "dk");
  expect_2x_baseline(got.dv, ref.dv, base.dv, "dv");
}

INSTANTIATE_TEST_SUITE_P(Cases, StridedGpu,
                         testing::Values(StridedGpuCase{"s16_w100_ragged_d128", 2, 1000, 4, 2, 128, 100, 16},
                                         StridedGpuCase{"s64_w256_d128", 1, 2048, 2, 2, 128, 256, 64},
                                         StridedGpuCase{"s32_w50_d64", 1, 777, 4, 1, 64, 50, 32},
                                         StridedGpuCase{"global64_w300_d128", 2, 1000, 4, 2, 128, 300, 0, 64},
                                         StridedGpuCase{"global7_w64_d64", 1, 555, 2, 2, 64, 64, 0, 7}),
                         [](const testing::TestParamInfo<StridedGpuCase>& i) { return i.param.name; });

}  // namespace
