// state_scan_forward / state_scan_backward: the incoming state of every segment and the final
// state equal a direct sequential recurrence over global positions (f64 on the host), with and
// without h0, elementwise (m = 1) and per-row decays (m = 3), in f32 and f64, on every layout of
// the sweep; the backward (including d_h0) matches central differences of
// sum_j <w_j, incoming_j> + <w_f, final> in f64; bad inputs name the tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "common/gradcheck.h"
#include "dist/state_scan.h"
#include "dist_test.h"
#include "primitives_test.h"

using namespace lctx;
using namespace lctx::dist;

namespace {

void expect_state(const Tensor& got, const std::vector<double>& want, DType dtype, const std::string& what) {
  ASSERT_EQ(got.dtype(), dtype == DType::f64 ? DType::f64 : DType::f32) << what;
  const auto v = got.to_vector();
  ASSERT_EQ(v.size(), want.size()) << what;
  const double tol = dtype == DType::f64 ? 1e-12 : 1e-5;
  for (size_t i = 0; i < v.size(); ++i)
    ASSERT_NEAR(v[i], want[i], tol * (1 + std::abs(want[i]))) << what << " element " << i;
}

class StateScan : public ::testing::TestWithParam<std::tuple<test::LayoutCase, DType>> {};

TEST_P(StateScan, MatchesSequentialRecurrence) {
  const auto [lc, dtype] = GetParam();
  const Layout layout = lc.layout();
  for (int64_t m : {1, 3})
    for (bool with_h0 : {true, false}) {
      SCOPED_TRACE("m " + std::to_string(m) + (with_h0 ? " with h0" : " without h0"));
      const test::Recurrence rec{2, 2, m};
      LCTX_RUN_RANKS_OR_SKIP(lc.ranks(), [&](Comm& c) {
        const auto local = rec.summaries(layout, c.rank(), dtype);
        const Tensor h0 = with_h0 ? rec.state_tensor(rec.initial(true), dtype) : Tensor{};
        const ScanResult r = state_scan_forward(c, layout, local, h0);
        const auto segs = layout.segments(c.rank());
        ASSERT_EQ(r.incoming.size(), segs.size());
        for (size_t k = 0; k < segs.size(); ++k)
          expect_state(r.incoming[k], rec.state(segs[k].global_begin, with_h0), dtype,
                       "rank " + std::to_string(c.rank()) + " incoming[" + std::to_string(k) + "]");
        expect_state(r.final_state, rec.state(layout.seq_len(), with_h0), dtype, "final_state");
      });
    }
}

INSTANTIATE_TEST_SUITE_P(Layouts, StateScan,
                         ::testing::Combine(::testing::ValuesIn(test::layout_cases()),
                                            ::testing::Values(DType::f32, DType::f64)),
                         test::layout_dtype_name);

// Gradients vs central differences of the total loss over all ranks. The ranks perturb in
// lockstep: for each rank's summaries in turn, the owner runs the gradient check while every
// other rank evaluates the (collective) loss as many times; h0, the same on every rank, is
// perturbed on all ranks at once.
class StateScanGrad : public ::testing::TestWithParam<test::LayoutCase> {};

TEST_P(StateScanGrad, MatchesFiniteDifferences) {
  const Layout layout = GetParam().layout();
  const test::Recurrence rec{2, 2, 2};
  LCTX_RUN_RANKS_OR_SKIP(layout.size(), [&](Comm& c) {
    auto local = rec.summaries(layout, c.rank(), DType::f64);
    Tensor h0 = rec.state_tensor(rec.initial(true), DType::f64);
    auto weights = [&](int64_t salt) {
      std::vector<double> w;
      for (int64_t b = 0; b < rec.B; ++b)
        for (int64_t i = 0; i < rec.n; ++i)
          for (int64_t k = 0; k < rec.m; ++k) w.push_back(((salt * 5 + b * 3 + i * 7 + k) % 13 - 6) / 6.0);
      return rec.state_tensor(w, DType::f64);
    };
    std::vector<Tensor> w;
    for (const Segment& s : layout.segments(c.rank())) w.push_back(weights(s.global_begin));
    const Tensor w_final = weights(-1);
    auto loss = [&] {
      const ScanResult r = state_scan_forward(c, layout, local, h0);
      double l[1] = {c.rank() == 0 ? test::dot(r.final_state, w_final) : 0.0};
      for (size_t k = 0; k < w.size(); ++k) l[0] += test::dot(r.incoming[k], w[k]);
      c.all_reduce(std::span<double>(l), ReduceOp::sum);
      return l[0];
    };
    const ScanResult fwd = state_scan_forward(c, layout, local, h0);
    const ScanGrads g = state_scan_backward(c, layout, local, fwd, w, w_final);
    ASSERT_EQ(g.d_local.size(), local.size());
    for (int p = 0; p < layout.size(); ++p)
      for (size_t k = 0; k < layout.segments(p).size(); ++k)
        for (bool decay : {true, false}) {
          const std::string name = "rank " + std::to_string(p) + (decay ? " da[" : " de[") + std::to_string(k) + "]";
          if (p == c.rank()) {
            Tensor& x = decay ? local[k].a : local[k].e;
            test::expect_grad_close(loss, x, decay ? g.d_local[k].a : g.d_local[k].e, name.c_str());
          } else {
            const int64_t evals = 2 * rec.B * rec.n * (decay ? 1 : rec.m);
            for (int64_t i = 0; i < evals; ++i) loss();
          }
        }
    test::expect_grad_close(loss, h0, g.d_h0, "d_h0");
    // Without d_final the scan starts from zeros: d_h0 = G_0 of the incoming terms alone.
    const ScanGrads g0 = state_scan_backward(c, layout, local, fwd, w, Tensor{});
    const ScanGrads gf = state_scan_backward(c, layout, local, fwd, w, Tensor::zeros(h0.shape(), DType::f64));
    EXPECT_EQ(g0.d_h0.to_vector(), gf.d_h0.to_vector());
  });
}

INSTANTIATE_TEST_SUITE_P(Layouts, StateScanGrad, ::testing::ValuesIn(test::layout_cases()),
                         [](const auto& info) { return info.param.name(); });

TEST(StateScanErrors, NameTheTensor) {
  const Layout layout(LayoutKind::zigzag, 12, 2);
  const test::Recurrence rec{2, 2, 3};
  LCTX_RUN_RANKS_OR_SKIP(2, [&](Comm& c) {
    const auto good = rec.summaries(layout, c.rank(), DType::f64);
    const Tensor h0 = Tensor::zeros({2, 2, 3}, DType::f64);
    auto with = [&](size_t k, Tensor Affine::*member, const Tensor& t) {
      auto bad = good;
      bad[k].*member = t;
      return bad;
    };
    auto forward = [&](const std::vector<Affine>& local, const Tensor& h) { state_scan_forward(c, layout, local, h); };
    test::expect_error([&] { forward({good[0]}, h0); }, {"1 summaries for the 2 segments of sp rank"});
    test::expect_error([&] { forward(with(1, &Affine::e, Tensor::zeros({2, 2, 4}, DType::f64)), h0); },
                 {"e[1] has shape [2,2,4], expected [2,2,3]"});
    test::expect_error([&] { forward(with(0, &Affine::a, Tensor::zeros({2, 3}, DType::f64)), h0); },
                 {"a[0] has shape [2,3], expected [2,2]"});
    test::expect_error([&] { forward(with(0, &Affine::e, Tensor::zeros({2, 2}, DType::f64)), h0); },
                 {"e[0] f64[2,2]@cpu must be [B, n, m]"});
    test::expect_error([&] { forward(with(1, &Affine::a, Tensor::zeros({2, 2}, DType::f32)), h0); },
                 {"a[1] f32[2,2]@cpu must have the dtype and device of e[0]"});
    test::expect_error([&] { forward(with(0, &Affine::e, Tensor::zeros({2, 2, 3}, DType::i32)), h0); },
                 {"e[0] i32[2,2,3]@cpu must have a float dtype"});
    test::expect_error([&] { forward(good, Tensor::zeros({2, 2, 2}, DType::f64)); },
                 {"h0 has shape [2,2,2], expected [2,2,3]"});
    const ScanResult fwd = state_scan_forward(c, layout, good, h0);
    const std::vector<Tensor> d_ok{h0, h0}, d_bad{h0, Tensor::zeros({1, 2, 3}, DType::f64)};
    test::expect_error([&] { state_scan_backward(c, layout, good, fwd, d_bad, h0); },
                 {"d_incoming[1] has shape [1,2,3], expected [2,2,3]"});
    test::expect_error([&] { state_scan_backward(c, layout, good, fwd, std::vector<Tensor>{h0}, h0); },
                 {"1 incoming-state gradients and 2 forward states for the 2 segments"});
    test::expect_error([&] { state_scan_backward(c, layout, good, fwd, d_ok, Tensor::zeros({2, 2}, DType::f64)); },
                 {"d_final has shape [2,2], expected [2,2,3]"});
  });
}

}  // namespace
