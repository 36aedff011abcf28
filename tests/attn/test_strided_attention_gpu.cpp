// CUDA strided attention over a query range (strided_attention.h, StridedOptions::q_offset:
// the queries [q0, q0 + Sq) against the keys [0, q0 + Sq), as each rank of the `strided` mixer
// calls it) in bf16 against the f64 CPU reference by the 2x-bf16 rule (tests/common/
// bf16_baseline.h): the GPU error against the reference on the bf16-rounded inputs is at most
// twice the reference's own move under that rounding. Offsets on and off the stride's residue
// boundary (the front padding and the merge/lse-gather kernels' offset), ragged ends, GQA, head
// dims 64 and 128, strided query views, and the global-key form.
#include <gtest/gtest.h>

#include <string>

#include "attn/strided_attention.h"
#include "block_mask_cases.h"
#include "common/bf16_baseline.h"
#include "common/check.h"

using namespace lctx;
using namespace lctx::test;

namespace {

struct RangeGpuCase {
  std::string name;
  int64_t B, q0, Sq, Hq, Hkv, D, w, s, g = 0;  // g > 0: global keys instead of the stride
};
void PrintTo(const RangeGpuCase& c, std::ostream* os) { *os << c.name; }

struct Results {
  Tensor o, lse, dq, dk, dv;
};

// Forward and backward of the range [q0, S) of x (whole-sequence tensors), on x's device.
Results run_range(const Qkv& x, const attn::StridedOptions& opts) {
  const int64_t S = x.q.size(1);
  const Tensor q = x.q.slice(1, opts.q_offset, S), dout = x.dout.slice(1, opts.q_offset, S);
  const auto out = attn::strided_attention_forward(q, x.k, x.v, opts);
  const auto g = attn::strided_attention_backward(q, x.k, x.v, out.o, out.lse, dout, opts);
  return {out.o, out.lse, g.dq, g.dk, g.dv};
}

Qkv on(const Qkv& x, DType dt, Device dev) {
  return {x.q.to(dt).to(dev), x.k.to(dt).to(dev), x.v.to(dt).to(dev), x.dout.to(dt).to(dev)};
}

class StridedRangeGpu : public testing::TestWithParam<RangeGpuCase> {};

TEST_P(StridedRangeGpu, MatchesCpuReference) {
  LCTX_REQUIRE_GPU();
  const RangeGpuCase& c = GetParam();
  const Qkv x = random_qkv(c.B, c.q0 + c.Sq, c.Hq, c.Hkv, c.D, 17);
  const attn::StridedOptions opts{.window = c.w, .stride = c.s, .n_global = c.g, .q_offset = c.q0};
  const Results exact = run_range(x, opts);
  const Results ref = run_range({round_bf16(x.q), round_bf16(x.k), round_bf16(x.v), round_bf16(x.dout)}, opts);
  const Results got = run_range(on(x, DType::bf16, Device::cuda()), opts);
  expect_within_bf16_baseline(c.name + " o", got.o, ref.o, exact.o);
  expect_within_bf16_baseline(c.name + " lse", got.lse, ref.lse, exact.lse);
  expect_within_bf16_baseline(c.name + " dq", got.dq, ref.dq, exact.dq);
  expect_within_bf16_baseline(c.name + " dk", got.dk, ref.dk, exact.dk);
  expect_within_bf16_baseline(c.name + " dv", got.dv, ref.dv, exact.dv);
}

INSTANTIATE_TEST_SUITE_P(Cases, StridedRangeGpu,
                         testing::Values(RangeGpuCase{"on_boundary_d128", 2, 512, 500, 4, 2, 128, 100, 16},
                                         RangeGpuCase{"off_boundary_d64", 1, 300, 333, 4, 1, 64, 50, 32},
                                         RangeGpuCase{"off_boundary_gqa_d128", 2, 1000, 250, 4, 2, 128, 64, 24},
                                         RangeGpuCase{"short_range_d64", 1, 777, 40, 2, 2, 64, 30, 64},
                                         RangeGpuCase{"global_offset_d128", 1, 600, 400, 4, 2, 128, 128, 0, 64}),
                         [](const testing::TestParamInfo<RangeGpuCase>& i) { return i.param.name; });

}  // namespace
