// row_gather_forward / row_gather_backward: the gathered rows equal the token formula at the
// listed positions (strided, global tokens, unsorted with repeats, none) on every layout of the
// sweep; the backward is the adjoint of the forward (f64, summed over ranks, each rank with its
// own row gradients); bad inputs name the tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "dist/row_gather.h"
#include "dist_test.h"
#include "primitives_test.h"

using namespace lctx;
using namespace lctx::dist;

namespace {

constexpr int64_t kB = 2, kF = 3;

// Position lists for a sequence of S tokens.
std::vector<std::vector<int64_t>> position_lists(int64_t S) {
  std::vector<int64_t> strided, global{0, 1, 2}, mixed{S - 1, 0, S / 2, S / 2 + 1, 1, S / 2, S - 1, 2};
  for (int64_t g = 2; g < S; g += 5) strided.push_back(g);
  return {strided, global, mixed, {}};
}

class RowGather : public ::testing::TestWithParam<std::tuple<test::LayoutCase, DType>> {};

TEST_P(RowGather, RowsMatchFormula) {
  const auto [lc, dtype] = GetParam();
  const Layout layout = lc.layout();
  for (const auto& pos : position_lists(layout.seq_len())) {
    LCTX_RUN_RANKS_OR_SKIP(lc.ranks(), [&](Comm& c) {
      const Tensor x = test::rank_tokens(layout, c.rank(), kB, {kF}, dtype);
      const Tensor rows = row_gather_forward(c, layout, x, pos);
      const int64_t n = static_cast<int64_t>(pos.size());
      ASSERT_EQ(rows.shape(), (Shape{kB, n, kF}));
      ASSERT_EQ(rows.dtype(), dtype);
      const auto v = rows.to_vector();
      for (int64_t b = 0; b < kB; ++b)
        for (int64_t j = 0; j < n; ++j)
          for (int64_t f = 0; f < kF; ++f)
            ASSERT_EQ(v[(b * n + j) * kF + f], test::token_value(b, pos[j], f))
                << "rank " << c.rank() << " b " << b << " row " << j << " (position " << pos[j] << ")";
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, RowGather,
                         ::testing::Combine(::testing::ValuesIn(test::layout_cases()),
                                            ::testing::Values(DType::f32, DType::f64)),
                         test::layout_dtype_name);

// sum over ranks r of <row_gather_forward(x), y_r> == sum over ranks of <x, row_gather_backward(y_r)>,
// in f64; dx starts non-zero (row_gather_backward accumulates).
class RowGatherAdjoint : public ::testing::TestWithParam<test::LayoutCase> {};

TEST_P(RowGatherAdjoint, BackwardIsAdjoint) {
  const test::LayoutCase lc = GetParam();
  const Layout layout = lc.layout();
  for (const auto& pos : position_lists(layout.seq_len())) {
    LCTX_RUN_RANKS_OR_SKIP(lc.ranks(), [&](Comm& c) {
      const Tensor x = test::rank_tokens(layout, c.rank(), kB, {kF}, DType::f64);
      const Tensor rows = row_gather_forward(c, layout, x, pos);
      const int64_t n = static_cast<int64_t>(pos.size());
      std::vector<double> yv;
      for (int64_t b = 0; b < kB; ++b)
        for (int64_t j = 0; j < n; ++j)
          for (int64_t f = 0; f < kF; ++f) yv.push_back(((c.rank() * 29 + b * 13 + j * 7 + f * 3) % 41 - 20) / 4.0);
      const Tensor y = Tensor::from_vector({kB, n, kF}, yv, DType::f64);
      const Tensor dx0 = test::rank_tokens(layout, c.rank(), kB, {kF}, DType::f64,
                                           [](int64_t b, int64_t g, int64_t f) { return (b + g - f) / 4.0; });
      Tensor dx = dx0.clone();
      row_gather_backward(c, layout, y, pos, dx);
      double sums[2] = {test::dot(rows, y), 0};  // <rows, y>, <x, dx - dx0>
      const auto d = dx.to_vector(), d0 = dx0.to_vector(), xv = x.to_vector();
      for (size_t i = 0; i < d.size(); ++i) sums[1] += xv[i] * (d[i] - d0[i]);
      c.all_reduce(std::span<double>(sums), ReduceOp::sum);
      EXPECT_NEAR(sums[0], sums[1], 1e-9 * (1 + std::abs(sums[0])));
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, RowGatherAdjoint, ::testing::ValuesIn(test::layout_cases()),
                         [](const auto& info) { return info.param.name(); });

TEST(RowGatherErrors, NameTheTensor) {
  const Layout layout(LayoutKind::zigzag, 12, 2);
  LCTX_RUN_RANKS_OR_SKIP(2, [&](Comm& c) {
    const Tensor x = test::rank_tokens(layout, c.rank(), kB, {kF}, DType::f64);
    const std::vector<int64_t> pos{3, 0, 7}, bad{3, 12};
    test::expect_error([&] { row_gather_forward(c, layout, x.slice(1, 0, 4), pos); }, {"x f64[2,4,3]"});
    test::expect_error([&] { row_gather_forward(c, layout, x, bad); }, {"position 12 outside [0, 12)"});
    Tensor dx = Tensor::zeros(x.shape(), DType::f64);
    test::expect_error([&] { row_gather_backward(c, layout, Tensor::zeros({kB, 2, kF}, DType::f64), pos, dx); },
                 {"drows has shape [2,2,3], expected [2,3,3]"});
    Tensor dx_small = Tensor::zeros({kB, 5, kF}, DType::f64);
    test::expect_error([&] { row_gather_backward(c, layout, Tensor::zeros({kB, 3, kF}, DType::f64), pos, dx_small); },
                 {"dx f64[2,5,3]"});
  });
}

}  // namespace
