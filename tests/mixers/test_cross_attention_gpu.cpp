// mixers/cross_attention.h on CUDA in bf16 against the f64 CPU run on the same bf16-rounded
// inputs, by the 2x bf16 baseline rule (tests/common/bf16_baseline.h): queries over block-
// compressed rows at the blocks' last positions (runs of b queries that see the same prefix,
// b = 1, 2, 4, 7: nsa's and memory's compressed branches, down to one query per flash call; with
// 200 and 300 queries, runs over more than a 128-key tile; b = 4 and 16 (512 queries) take the
// batched calls of whole blocks, the b - 1 early offsets stacked as the flash batch; and the
// queries of rank 0 of 2 under zigzag, two segments, the later one at a query offset: nsa_3's
// layout on 2 ranks, with blocks of 1) and over position-free memory rows (one call); o, lse,
// dq, dk, dv.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/bf16_baseline.h"
#include "core/rng.h"
#include "mixers/cross_attention.h"

using namespace lctx;
using namespace lctx::mixers;
using namespace lctx::test;

namespace {

constexpr int64_t kB = 2, kH = 4, kHk = 2, kHd = 64;

Tensor random(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0, 0.0, 1.0);
  return t;
}

struct Result {
  Tensor o, lse, dq, dk, dv;  // f64 on the CPU
};

// Forward, then the backward of the softmax this part alone makes; CPU f64 or CUDA bf16.
Result run(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, const std::vector<int64_t>& qpos,
           const std::vector<int64_t>& kpos, Device dev) {
  const bool gpu = dev.is_cuda();
  const DType dt = gpu ? DType::bf16 : DType::f64, wide = gpu ? DType::f32 : DType::f64;
  const auto in = [&](const Tensor& t) { return t.to(dt).to(dev); };
  const auto back = [](const Tensor& t) { return t.to(Device::cpu()).to(DType::f64); };
  const Tensor qd = in(q), kd = in(k), vd = in(v), dod = in(dout);
  const attn::FlashOutput f = cross_attention_forward(qd, qpos, kd, vd, kpos, {});
  const attn::FlashGrads g{Tensor::zeros(q.shape(), wide, dev), Tensor::zeros(k.shape(), wide, dev),
                           Tensor::zeros(v.shape(), wide, dev)};
  cross_attention_backward(qd, qpos, kd, vd, kpos, f.o.to(dt), f.lse, dod, {}, g);
  return {back(f.o), back(f.lse), back(g.dq), back(g.dk), back(g.dv)};
}

struct CrossCase {
  int64_t block;  // b; 0: no key positions (3 memory rows)
  int64_t queries;
  bool zigzag = false;  // the queries of rank 0 of 2 under zigzag: [0, L/2) and [3L/2, 2L) of 2L positions
};

std::string name(const CrossCase& c) {
  return "b" + std::to_string(c.block) + "_L" + std::to_string(c.queries) + (c.zigzag ? "_zigzag" : "");
}
void PrintTo(const CrossCase& c, std::ostream* os) { *os << name(c); }

class CrossAttentionGpu : public ::testing::TestWithParam<CrossCase> {};

TEST_P(CrossAttentionGpu, Bf16WithinTwiceBaseline) {
  LCTX_REQUIRE_GPU();
  const int64_t b = GetParam().block, L = GetParam().queries, S = GetParam().zigzag ? 2 * L : L;
  const int64_t N = b > 0 ? S / b : 3;
  std::vector<int64_t> qpos, kpos;
  for (int64_t i = 0; i < L; ++i) qpos.push_back(GetParam().zigzag && i >= L / 2 ? S - L + i : i);
  for (int64_t c = 0; b > 0 && c < N; ++c) kpos.push_back((c + 1) * b - 1);  // a block's last token
  if (b == 0) qpos.clear();
  const Tensor q = random({kB, L, kH, kHd}, 1), k = random({kB, N, kHk, kHd}, 2), v = random({kB, N, kHk, kHd}, 3),
               dout = random({kB, L, kH, kHd}, 4);
  const Result exact = run(q, k, v, dout, qpos, kpos, Device::cpu());
  const Result ref = run(round_bf16(q), round_bf16(k), round_bf16(v), round_bf16(dout), qpos, kpos, Device::cpu());
  const Result got = run(round_bf16(q), round_bf16(k), round_bf16(v), round_bf16(dout), qpos, kpos, Device::cuda());
  const std::string at = " b=" + std::to_string(b) + " L=" + std::to_string(L);
  expect_within_bf16_baseline("o" + at, got.o, ref.o, exact.o);
  // Queries before the first block's end see nothing (lse -inf): compared where finite.
  const std::vector<double> gl = got.lse.to_vector(), rl = ref.lse.to_vector();
  for (size_t i = 0; i < gl.size(); ++i)
    ASSERT_TRUE(std::isinf(rl[i]) ? gl[i] == rl[i] : std::abs(gl[i] - rl[i]) <= 0.05 * (1 + std::abs(rl[i])))
        << "lse[" << i << "]" << at << ": " << gl[i] << " vs " << rl[i];
  expect_within_bf16_baseline("dq" + at, got.dq, ref.dq, exact.dq);
  expect_within_bf16_baseline("dk" + at, got.dk, ref.dk, exact.dk);
  expect_within_bf16_baseline("dv" + at, got.dv, ref.dv, exact.dv);
}

INSTANTIATE_TEST_SUITE_P(Blocks, CrossAttentionGpu,
                         ::testing::Values(CrossCase{0, 48}, CrossCase{1, 48}, CrossCase{2, 48}, CrossCase{4, 48},
                                           CrossCase{7, 48}, CrossCase{1, 200}, CrossCase{2, 300},
                                           CrossCase{16, 512}, CrossCase{1, 24, true}, CrossCase{4, 48, true}),
                         [](const auto& info) { return name(info.param); });

}  // namespace
