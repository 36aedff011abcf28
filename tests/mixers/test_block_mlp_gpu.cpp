// mixers/block_mlp.h (NSA's learned block compression) on CUDA in bf16 against the f64 CPU run
// on the same bf16-rounded inputs, by the 2x bf16 baseline rule (tests/common/bf16_baseline.h):
// the compressed rows, the K/V rows' gradients and each compressor's 5 parameter gradients, at
// head dim 64, blocks of 1 and 4 rows, hidden widths 5 (rows of 10 bytes: no 16-byte alignment
// for cuBLAS) and 64, with a trailing partial block that is never formed.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/bf16_baseline.h"
#include "core/rng.h"
#include "dist/comm.h"
#include "dist/sim_comm.h"
#include "mixers/block_mlp.h"

using namespace lctx;
using namespace lctx::mixers;
using namespace lctx::test;

namespace {

constexpr int64_t kB = 2, kHk = 2, kHd = 64, kS = 50;  // 50: a trailing partial block of 2 at b = 4

struct MlpCase {
  int64_t block, hidden;
};

void PrintTo(const MlpCase& c, std::ostream* os) { *os << "b" << c.block << "_hidden" << c.hidden; }

Tensor random(const Shape& shape, uint64_t seed, double std) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0, 0.0, std);
  return t;
}

BlockMlp random_mlp(const MlpCase& c, uint64_t seed) {
  return {random({c.block, kHd}, seed, 0.5), random({c.hidden, c.block * kHd}, seed + 1, 0.1),
          random({c.hidden}, seed + 2, 0.3), random({kHd, c.hidden}, seed + 3, 0.2), random({kHd}, seed + 4, 0.3)};
}

// One compressor's tensors mapped by f.
template <class F>
BlockMlp map(const BlockMlp& m, F f) {
  return {f(m.pos), f(m.w1), f(m.b1), f(m.w2), f(m.b2)};
}

struct Inputs {
  Tensor k, v, dc;
  BlockMlpPair w;
};

struct Result {
  Tensor rows_k, rows_v, dk, dv, grads_k, grads_v;  // f64 on the CPU
};

Tensor flat(const BlockMlp& g) {
  std::vector<double> all;
  for (const Tensor& t : {g.pos, g.w1, g.b1, g.w2, g.b2}) {
    const std::vector<double> x = t.to_vector();
    all.insert(all.end(), x.begin(), x.end());
  }
  return Tensor::from_vector({static_cast<int64_t>(all.size())}, all, DType::f64);
}

// Forward and backward on one rank: CPU f64, or CUDA with bf16 rows and weights and f32
// gradients (what the nsa mixer hands it there).
Result run(const Inputs& in, int64_t block, Device dev) {
  const bool gpu = dev.is_cuda();
  const DType dt = gpu ? DType::bf16 : DType::f64, wide = gpu ? DType::f32 : DType::f64;
  const auto compute = [&](const Tensor& t) { return t.to(dt).to(dev); };
  const auto zeros = [&](const Tensor& t) { return Tensor::zeros(t.shape(), wide, dev); };
  const BlockMlpPair w{map(in.w.k, compute), map(in.w.v, compute)};
  const BlockMlpPair g{map(in.w.k, zeros), map(in.w.v, zeros)};
  const Tensor k = compute(in.k), v = compute(in.v), dk = zeros(in.k), dv = zeros(in.v);
  std::vector<int64_t> pos(static_cast<size_t>(kS));
  for (int64_t p = 0; p < kS; ++p) pos[static_cast<size_t>(p)] = p;
  Result r;
  dist::run_simulated(1, [&](dist::Comm& c) {
    const BlockRows rows = block_mlp_forward(c, k, v, pos, block, kS / block, w);
    const Tensor dc = in.dc.to(wide).to(dev);
    block_mlp_backward(c, dc, k, v, pos, block, w, g, dk, dv);
    r = {rows.k.to(Device::cpu()).to(DType::f64), rows.v.to(Device::cpu()).to(DType::f64),
         dk.to(Device::cpu()).to(DType::f64),     dv.to(Device::cpu()).to(DType::f64),
         flat(g.k),                                flat(g.v)};
  });
  return r;
}

class BlockMlpGpu : public ::testing::TestWithParam<MlpCase> {};

TEST_P(BlockMlpGpu, Bf16WithinTwiceBaseline) {
  LCTX_REQUIRE_GPU();
  const MlpCase& c = GetParam();
  const Inputs exact{random({kB, kS, kHk, kHd}, 1, 1.0), random({kB, kS, kHk, kHd}, 2, 1.0),
                     random({2, kB, kS / c.block, kHk, kHd}, 3, 1.0), {random_mlp(c, 10), random_mlp(c, 20)}};
  const Inputs rounded{round_bf16(exact.k), round_bf16(exact.v), round_bf16(exact.dc),
                       {map(exact.w.k, round_bf16), map(exact.w.v, round_bf16)}};
  const Result want = run(exact, c.block, Device::cpu()), ref = run(rounded, c.block, Device::cpu());
  const Result got = run(rounded, c.block, Device::cuda());
  const std::string at = " b=" + std::to_string(c.block) + " hidden=" + std::to_string(c.hidden);
  expect_within_bf16_baseline("rows k" + at, got.rows_k, ref.rows_k, want.rows_k);
  expect_within_bf16_baseline("rows v" + at, got.rows_v, ref.rows_v, want.rows_v);
  expect_within_bf16_baseline("dk" + at, got.dk, ref.dk, want.dk);
  expect_within_bf16_baseline("dv" + at, got.dv, ref.dv, want.dv);
  expect_within_bf16_baseline("k params' grads" + at, got.grads_k, ref.grads_k, want.grads_k);
  expect_within_bf16_baseline("v params' grads" + at, got.grads_v, ref.grads_v, want.grads_v);
}

INSTANTIATE_TEST_SUITE_P(Shapes, BlockMlpGpu,
                         ::testing::Values(MlpCase{1, 5}, MlpCase{1, 64}, MlpCase{4, 5}, MlpCase{4, 64}),
                         [](const auto& info) {
                           return "b" + std::to_string(info.param.block) + "_hidden" +
                                  std::to_string(info.param.hidden);
                         });

}  // namespace
