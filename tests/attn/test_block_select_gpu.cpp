// CUDA block_select (attn/block_select.h: query blocks folded into batched flash calls) in bf16
// against the f64 CPU path by the 2x-bf16 rule (tests/common/bf16_baseline.h): o, lse, dq, dk,
// dv; head dims 64 and 128, B > 1, GQA, empty slots and query blocks without keys, Sk != Sq,
// per-row query blocks (NSA's selection) and fp32 outputs for the LSE merge.
#include <gtest/gtest.h>

#include "attn/block_select.h"
#include "block_select_cases.h"
#include "common/bf16_baseline.h"
#include "common/check.h"
#include "core/device.h"
#include "core/rng.h"

using namespace lctx;
using namespace lctx::test;

namespace {

struct Results {
  Tensor o, lse, dq, dk, dv;
};

Results run(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, const attn::KeyBlocks& kb,
            attn::OutputDType od) {
  attn::FlashOptions opts;
  opts.out_dtype = od;
  const attn::FlashOutput f = attn::block_select_forward(q, k, v, kb, opts);
  const attn::FlashGrads g = attn::block_select_backward(q, k, v, f.o, f.lse, dout, kb, opts);
  const auto host = [](const Tensor& t) { return t.to(Device::cpu()).to(DType::f64); };
  return {host(f.o), host(f.lse), host(g.dq), host(g.dk), host(g.dv)};
}

class BlockSelectGpu : public testing::TestWithParam<BlockSelectCase> {};

TEST_P(BlockSelectGpu, WithinTwiceBf16Baseline) {
  LCTX_REQUIRE_GPU();
  const BlockSelectCase& c = GetParam();
  const attn::KeyBlocks kb = key_blocks(c);
  const auto normal = [](const Shape& s, uint64_t seed) {
    Tensor t = Tensor::empty(s, DType::f64);
    rng_normal(t, seed, 0);
    return t;
  };
  const Tensor q = normal({c.B, c.Sq, c.Hq, c.D}, 1), k = normal({c.B, c.Sk, c.Hkv, c.D}, 2),
               v = normal({c.B, c.Sk, c.Hkv, c.D}, 3), dout = normal({c.B, c.Sq, c.Hq, c.D}, 4);
  const Tensor qr = round_bf16(q), kr = round_bf16(k), vr = round_bf16(v), dr = round_bf16(dout);
  const Results exact = run(q, k, v, dout, kb, attn::OutputDType::input);
  const Results ref = run(qr, kr, vr, dr, kb, attn::OutputDType::input);
  const Device gpu = Device::cuda(0);
  for (const attn::OutputDType od : {attn::OutputDType::input, attn::OutputDType::f32}) {
    const Results got = run(qr.to(DType::bf16).to(gpu), kr.to(DType::bf16).to(gpu), vr.to(DType::bf16).to(gpu),
                            dr.to(DType::bf16).to(gpu), kb, od);
    const std::string tag = c.name + (od == attn::OutputDType::f32 ? " f32-out " : " ");
    expect_within_bf16_baseline(tag + "o", got.o, ref.o, exact.o);
    expect_within_bf16_baseline(tag + "lse", finite_lse(got.lse, ref.lse), finite_lse(ref.lse, ref.lse),
                                finite_lse(exact.lse, ref.lse));
    expect_within_bf16_baseline(tag + "dq", got.dq, ref.dq, exact.dq);
    expect_within_bf16_baseline(tag + "dk", got.dk, ref.dk, exact.dk);
    expect_within_bf16_baseline(tag + "dv", got.dv, ref.dv, exact.dv);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, BlockSelectGpu,
                         testing::Values(BlockSelectCase{"d64_gqa_batch", 2, 256, 256, 4, 2, 64, 64, 64, 3},
                                         BlockSelectCase{"d128_mha", 1, 192, 320, 2, 2, 128, 64, 32, 4},
                                         BlockSelectCase{"d64_rows_nsa", 1, 64, 512, 8, 1, 64, 1, 64, 4},
                                         BlockSelectCase{"d128_ragged_keys", 2, 128, 300, 4, 1, 128, 32, 64, 2}),
                         [](const testing::TestParamInfo<BlockSelectCase>& i) { return i.param.name; });

}  // namespace
