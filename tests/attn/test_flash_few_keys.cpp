// flash_backward_few_keys (attn/flash_few_keys.h) against one plain flash_backward of the same
// all-visible call, in f64: query rows folded into the batch (ragged last chunk, B > 1, GQA),
// the unfolded path for short query sets, gradients added to what the accumulators hold; and
// the refusal of a call with a mask.
#include <gtest/gtest.h>

#include "attn/flash.h"
#include "attn/flash_few_keys.h"
#include "common/check.h"
#include "common/expect_error.h"
#include "core/rng.h"

using namespace lctx;

namespace {

struct FewKeysCase {
  std::string name;
  int64_t B, Sq, Sk, Hq, Hkv, D;
};

Tensor random(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0);
  return t;
}

class FlashFewKeys : public testing::TestWithParam<FewKeysCase> {};

TEST_P(FlashFewKeys, AddsWhatOneFlashBackwardComputes) {
  const FewKeysCase& c = GetParam();
  const Tensor q = random({c.B, c.Sq, c.Hq, c.D}, 1), k = random({c.B, c.Sk, c.Hkv, c.D}, 2),
               v = random({c.B, c.Sk, c.Hkv, c.D}, 3), dout = random({c.B, c.Sq, c.Hq, c.D}, 4);
  const attn::FlashOptions opts;  // every pair visible
  const attn::FlashOutput f = attn::flash_forward(q, k, v, opts);
  const attn::FlashGrads want = attn::flash_backward(q, k, v, f.o, f.lse, dout, opts);
  // Accumulators that already hold something: the call adds to them.
  const Tensor dq0 = random(q.shape(), 5), dk0 = random(k.shape(), 6), dv0 = random(k.shape(), 7);
  attn::FlashGrads got{dq0.clone(), dk0.clone(), dv0.clone()};
  attn::flash_backward_few_keys(q, k, v, f.o, f.lse, dout, opts, got);
  const auto plus = [](const Tensor& a, const Tensor& b) {
    Tensor r = a.clone();
    r.add_from(b);
    return r;
  };
  LCTX_EXPECT_CLOSE(got.dq, plus(dq0, want.dq), 1e-12);
  LCTX_EXPECT_CLOSE(got.dk, plus(dk0, want.dk), 1e-12);
  LCTX_EXPECT_CLOSE(got.dv, plus(dv0, want.dv), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Cases, FlashFewKeys,
                         testing::Values(FewKeysCase{"folded_ragged_gqa", 2, 333, 5, 4, 2, 8},
                                         FewKeysCase{"folded_one_key", 1, 640, 1, 2, 1, 8},
                                         FewKeysCase{"short_queries", 3, 40, 7, 2, 2, 8}),
                         [](const testing::TestParamInfo<FewKeysCase>& i) { return i.param.name; });

TEST(FlashFewKeys, RefusesMaskedCalls) {
  const Tensor q = random({1, 8, 2, 8}, 1), k = random({1, 3, 2, 8}, 2), v = random({1, 3, 2, 8}, 3);
  attn::FlashOptions causal;
  causal.mask = attn::Mask::causal;
  const attn::FlashOutput f = attn::flash_forward(q, k, v, causal);
  attn::FlashGrads g{Tensor::zeros(q.shape(), DType::f64), Tensor::zeros(k.shape(), DType::f64),
                     Tensor::zeros(k.shape(), DType::f64)};
  test::expect_error([&] { attn::flash_backward_few_keys(q, k, v, f.o, f.lse, q, causal, g); },
                     {"flash_backward_few_keys", "every pair must be visible"});
}

}  // namespace
