// ops::row_pool on the CPU: bucket sums against a direct loop, the backward as the forward's
// transpose (f64 finite differences), the index of rows with and without a bucket, bad inputs.
#include <gtest/gtest.h>

#include <vector>

#include "common/gradcheck.h"
#include "ops/row_pool.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

struct PoolCase {
  int64_t B, R, N;
  std::vector<int64_t> bucket_of_row;  // L rows
};

class RowPoolCases : public ::testing::TestWithParam<PoolCase> {};

TEST_P(RowPoolCases, SumsAndTranspose) {
  const PoolCase& c = GetParam();
  const int64_t L = static_cast<int64_t>(c.bucket_of_row.size());
  const RowBuckets ix = row_buckets(c.bucket_of_row, c.N, Device::cpu());
  Tensor rows = randn({c.B, L, c.R}, 1), init = randn({c.B, c.N, c.R}, 2), r = randn({c.B, c.N, c.R}, 3);
  Tensor buckets = Tensor::empty(init.shape(), DType::f64);
  buckets.copy_from(init);
  row_pool_forward(buckets, rows, ix, 0.25);
  std::vector<double> want = init.to_vector();
  const auto rv = rows.to_vector();
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t k = c.bucket_of_row[static_cast<size_t>(l)];
      if (k < 0) continue;
      for (int64_t e = 0; e < c.R; ++e)
        want[static_cast<size_t>((b * c.N + k) * c.R + e)] += 0.25 * rv[static_cast<size_t>((b * L + l) * c.R + e)];
    }
  const auto got = buckets.to_vector();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-14);

  auto loss = [&] {
    Tensor out = Tensor::zeros({c.B, c.N, c.R}, DType::f64);
    row_pool_forward(out, rows, ix, 0.25);
    return dot(out, r);
  };
  Tensor d_rows = Tensor::zeros({c.B, L, c.R}, DType::f64);
  row_pool_backward(d_rows, r, ix, 0.25);
  test::expect_grad_close(loss, rows, d_rows, "d_rows");
}

INSTANTIATE_TEST_SUITE_P(Ops, RowPoolCases,
                         ::testing::Values(PoolCase{1, 3, 2, {0, 0, 1, 1, -1}}, PoolCase{2, 5, 3, {2, -1, 0, 2, 1, 0, 2}},
                                           PoolCase{2, 4, 4, {-1, -1}}, PoolCase{1, 2, 1, {0}}));

TEST(RowPool, IndexListsEachBucketsRowsInOrder) {
  const RowBuckets ix = row_buckets(std::vector<int64_t>{2, -1, 0, 2, 0}, 3, Device::cpu());
  EXPECT_EQ(ix.bucket.to_vector(), (std::vector<double>{2, -1, 0, 2, 0}));
  EXPECT_EQ(ix.offsets.to_vector(), (std::vector<double>{0, 2, 2, 4}));
  EXPECT_EQ(ix.members.to_vector(), (std::vector<double>{2, 4, 0, 3}));
}

TEST(RowPool, RejectsBadInputs) {
  test::expect_error([&] { row_buckets(std::vector<int64_t>{0, 3}, 3, Device::cpu()); },
                     {"row_buckets", "row 1", "bucket 3"});
  const RowBuckets ix = row_buckets(std::vector<int64_t>{0, 1, 1}, 2, Device::cpu());
  Tensor rows = randn({1, 3, 4}, 1), buckets = Tensor::zeros({1, 2, 4}, DType::f64);
  Tensor short_rows = randn({1, 2, 4}, 1), wrong = Tensor::zeros({1, 3, 4}, DType::f64);
  test::expect_error([&] { row_pool_forward(buckets, short_rows, ix, 1.0); }, {"row_pool_forward", "rows", "3 rows"});
  test::expect_error([&] { row_pool_forward(wrong, rows, ix, 1.0); }, {"row_pool_forward", "buckets"});
  Tensor b32 = Tensor::zeros({1, 2, 4}, DType::f32);
  test::expect_error([&] { row_pool_backward(rows, b32, ix, 1.0); }, {"row_pool_backward", "buckets", "f64"});
}

}  // namespace
