// embedding: gather forward, deterministic scatter-add backward (fp64 finite differences),
// GradMode::accumulate and id validation.
#include <gtest/gtest.h>
#include <omp.h>

#include "common/check.h"
#include "common/gradcheck.h"
#include "ops/embedding.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

struct EmbCase {
  int64_t b, s, v, d;
};
class EmbeddingShapes : public ::testing::TestWithParam<EmbCase> {};

Tensor make_ids(int64_t b, int64_t s, int64_t v) {
  std::vector<double> ids(b * s);
  for (int64_t i = 0; i < b * s; ++i) ids[i] = static_cast<double>((i * 7 + 3) % v);  // repeats when b*s > v
  return Tensor::from_vector({b, s}, ids, DType::i32);
}

TEST_P(EmbeddingShapes, ForwardGathersAndBackwardMatchesFiniteDifferences) {
  const auto [b, s, v, d] = GetParam();
  Tensor ids = make_ids(b, s, v), w = randn({v, d}, 1);
  Tensor out = Tensor::empty({b, s, d}, DType::f64), r = randn({b, s, d}, 2);
  embedding_forward(out, ids, w);
  const auto iv = ids.to_vector(), wv = w.to_vector(), ov = out.to_vector();
  for (int64_t i = 0; i < b * s; ++i)
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(ov[i * d + j], wv[static_cast<int64_t>(iv[i]) * d + j]);
  auto loss = [&] {
    embedding_forward(out, ids, w);
    return dot(out, r);
  };
  Tensor dw = Tensor::full({v, d}, 5.0, DType::f64);  // overwrite must ignore this
  embedding_backward(dw, ids, r, GradMode::overwrite);
  test::expect_grad_close(loss, w, dw, "dw");
  const auto once = dw.to_vector();
  embedding_backward(dw, ids, r, GradMode::accumulate);
  const auto twice = dw.to_vector();
  for (size_t i = 0; i < once.size(); ++i) EXPECT_DOUBLE_EQ(twice[i], 2 * once[i]);
}

INSTANTIATE_TEST_SUITE_P(Ops, EmbeddingShapes,
                         ::testing::Values(EmbCase{1, 1, 1, 1}, EmbCase{2, 5, 3, 7}, EmbCase{3, 11, 17, 130}));

TEST(Embedding, BackwardIsIndependentOfThreadCount) {
  Tensor ids = make_ids(8, 512, 37), dout = randn({8, 512, 200}, 3, DType::f32);
  Tensor a = Tensor::empty({37, 200}, DType::f32), b = Tensor::empty({37, 200}, DType::f32);
  embedding_backward(a, ids, dout, GradMode::overwrite);
  omp_set_num_threads(1);
  embedding_backward(b, ids, dout, GradMode::overwrite);
  omp_set_num_threads(omp_get_num_procs());
  EXPECT_EQ(a.to_vector(), b.to_vector());
}

TEST(Embedding, RejectsBadInputs) {
  Tensor w = randn({5, 4}, 1, DType::f32), out = Tensor::empty({2, 3, 4}, DType::f32);
  Tensor ids = Tensor::from_vector({2, 3}, std::vector<double>{0, 1, 2, 3, 4, 5}, DType::i32);
  test::expect_error([&] { embedding_forward(out, ids, w); }, {"embedding_forward", "token id 5", "[0, 5)"});
  Tensor ids64 = Tensor::zeros({2, 3}, DType::i64);
  test::expect_error([&] { embedding_forward(out, ids64, w); }, {"embedding_forward", "ids", "i32"});
  Tensor ok_ids = Tensor::zeros({2, 3}, DType::i32), out_bad = Tensor::empty({2, 3, 5}, DType::f32);
  test::expect_error([&] { embedding_forward(out_bad, ok_ids, w); }, {"embedding_forward", "out", "expected [2,3,4]"});
  Tensor dw = Tensor::empty({5, 4}, DType::f64);
  test::expect_error([&] { embedding_backward(dw, ok_ids, out, GradMode::overwrite); },
                     {"embedding_backward", "dw", "f32"});
}

}  // namespace
