// argmax_rows on the CPU: random rows against a direct scan, ties resolve to the first index,
// bad shapes and dtypes are errors.
#include <gtest/gtest.h>

#include "ops/argmax.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

TEST(Argmax, MatchesScanAndTakesFirstOnTies) {
  for (int64_t v : {1, 7, 256, 1000}) {
    const Tensor x = randn({3, 5, v}, 11, DType::f32);
    Tensor out = Tensor::empty({15}, DType::i32);
    argmax_rows(out, x);
    const auto xv = x.to_vector();
    const auto ov = out.to_vector();
    for (int64_t i = 0; i < 15; ++i) {
      int64_t best = 0;
      for (int64_t j = 1; j < v; ++j)
        if (xv[i * v + j] > xv[i * v + best]) best = j;
      EXPECT_EQ(ov[i], best) << "row " << i << " V " << v;
    }
  }
  Tensor ties = Tensor::zeros({2, 9}, DType::f64);
  ties.slice(0, 1, 2).slice(1, 3, 9).fill(2.0);
  Tensor out = Tensor::empty({2}, DType::i32);
  argmax_rows(out, ties);
  EXPECT_EQ(out.to_vector(), (std::vector<double>{0, 3}));
}

TEST(Argmax, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({4, 8}, DType::f32);
  Tensor wrong_len = Tensor::empty({3}, DType::i32), wrong_dtype = Tensor::empty({4}, DType::i64);
  EXPECT_THROW(argmax_rows(wrong_len, x), Error);
  EXPECT_THROW(argmax_rows(wrong_dtype, x), Error);
  Tensor ok = Tensor::empty({4}, DType::i32);
  EXPECT_THROW(argmax_rows(ok, Tensor::zeros({4, 0}, DType::f32)), Error);
}
