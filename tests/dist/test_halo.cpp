// halo_forward / halo_backward: every halo row equals the token formula at its global position
// (zero before position 0), for widths below and above a segment's length, on every layout of
// the sweep; the backward is the adjoint of the forward (f64, summed over ranks); bad inputs
// name the tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "dist/halo.h"
#include "dist_test.h"
#include "primitives_test.h"

using namespace lctx;
using namespace lctx::dist;

namespace {

constexpr int64_t kB = 2;
const Shape kFeatures{2, 3};  // [B, L, 2, 3]: more than one trailing dim
constexpr int64_t kF = 6;
const int64_t kWidths[] = {0, 1, 2, 5, 13};  // segments hold 3 to 6 tokens

class Halo : public ::testing::TestWithParam<std::tuple<test::LayoutCase, DType>> {};

TEST_P(Halo, RowsMatchFormula) {
  const auto [lc, dtype] = GetParam();
  const Layout layout = lc.layout();
  for (int64_t w : kWidths) {
    SCOPED_TRACE("width " + std::to_string(w));
    LCTX_RUN_RANKS_OR_SKIP(lc.ranks(), [&](Comm& c) {
      const Tensor x = test::rank_tokens(layout, c.rank(), kB, kFeatures, dtype);
      const auto halo = halo_forward(c, layout, x, w);
      const auto segs = layout.segments(c.rank());
      ASSERT_EQ(halo.size(), segs.size());
      for (size_t k = 0; k < segs.size(); ++k) {
        ASSERT_EQ(halo[k].shape(), (Shape{kB, w, 2, 3}));
        ASSERT_EQ(halo[k].dtype(), dtype);
        const auto v = halo[k].to_vector();
        for (int64_t b = 0; b < kB; ++b)
          for (int64_t i = 0; i < w; ++i) {
            const int64_t g = segs[k].global_begin - w + i;
            for (int64_t f = 0; f < kF; ++f)
              ASSERT_EQ(v[(b * w + i) * kF + f], g < 0 ? 0.0 : test::token_value(b, g, f))
                  << "rank " << c.rank() << " segment " << k << " b " << b << " row " << i << " (position " << g
                  << ") feature " << f;
          }
      }
    });
  }
}

// <halo_forward(x), y> == <x, halo_backward(y)>, both summed over ranks, in f64; dx starts
// non-zero (halo_backward accumulates).
class HaloAdjoint : public ::testing::TestWithParam<test::LayoutCase> {};

TEST_P(HaloAdjoint, BackwardIsAdjoint) {
  const test::LayoutCase lc = GetParam();
  const Layout layout = lc.layout();
  for (int64_t w : kWidths) {
    SCOPED_TRACE("width " + std::to_string(w));
    LCTX_RUN_RANKS_OR_SKIP(lc.ranks(), [&](Comm& c) {
      const Tensor x = test::rank_tokens(layout, c.rank(), kB, kFeatures, DType::f64);
      const auto halo = halo_forward(c, layout, x, w);
      std::vector<Tensor> y;  // a formula of (b, segment start, row, feature)
      double sums[2] = {0, 0};  // <halo, y>, <x, dx - dx0>
      const auto segs = layout.segments(c.rank());
      for (size_t k = 0; k < segs.size(); ++k) {
        std::vector<double> v;
        for (int64_t b = 0; b < kB; ++b)
          for (int64_t i = 0; i < w; ++i)
            for (int64_t f = 0; f < kF; ++f)
              v.push_back(static_cast<double>((b * 13 + segs[k].global_begin * 17 + i * 7 + f * 3) % 89 - 44) / 8);
        y.push_back(Tensor::from_vector({kB, w, 2, 3}, v, DType::f64));
        sums[0] += test::dot(halo[k], y[k]);
      }
      const Tensor dx0 = test::rank_tokens(layout, c.rank(), kB, kFeatures, DType::f64,
                                           [](int64_t b, int64_t g, int64_t f) { return (b + g - f) / 4.0; });
      Tensor dx = dx0.clone();
      halo_backward(c, layout, y, dx);
      const auto d = dx.to_vector(), d0 = dx0.to_vector(), xv = x.to_vector();
      for (size_t i = 0; i < d.size(); ++i) sums[1] += xv[i] * (d[i] - d0[i]);
      c.all_reduce(std::span<double>(sums), ReduceOp::sum);
      EXPECT_NEAR(sums[0], sums[1], 1e-9 * (1 + std::abs(sums[0])));
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, Halo,
                         ::testing::Combine(::testing::ValuesIn(test::layout_cases()),
                                            ::testing::Values(DType::f32, DType::f64)),
                         test::layout_dtype_name);
INSTANTIATE_TEST_SUITE_P(Layouts, HaloAdjoint, ::testing::ValuesIn(test::layout_cases()),
                         [](const auto& info) { return info.param.name(); });

TEST(HaloErrors, NameTheTensor) {
  const Layout layout(LayoutKind::zigzag, 12, 2);
  LCTX_RUN_RANKS_OR_SKIP(2, [&](Comm& c) {
    const Tensor x = test::rank_tokens(layout, c.rank(), kB, kFeatures, DType::f64);
    test::expect_error([&] { halo_forward(c, layout, x.slice(1, 0, 5), 2); }, {"x f64[2,5,2,3]"});
    test::expect_error([&] { halo_forward(c, layout, x, -1); }, {"width -1"});
    Tensor dx = Tensor::zeros(x.shape(), DType::f64);
    const Tensor h = Tensor::zeros({kB, 2, 2, 3}, DType::f64);
    const Tensor h3 = Tensor::zeros({kB, 3, 2, 3}, DType::f64);
    test::expect_error([&] { halo_backward(c, layout, std::vector<Tensor>{h}, dx); }, {"1 halo gradients for the 2 segments"});
    test::expect_error([&] { halo_backward(c, layout, std::vector<Tensor>{h, h3}, dx); }, {"dhalo[1] has shape [2,3,2,3]"});
    test::expect_error([&] { halo_backward(c, layout, std::vector<Tensor>{h, h.to(DType::f32)}, dx); }, {"dhalo[1]"});
    Tensor dx_bf16 = Tensor::zeros(x.shape(), DType::bf16);
    test::expect_error([&] { halo_backward(c, layout, std::vector<Tensor>{h, h}, dx_bf16); }, {"dx bf16[2,6,2,3]"});
  });
}

}  // namespace
