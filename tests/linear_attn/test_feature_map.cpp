// Feature maps (identity, elu+1, relu, FAVOR+) against their formulas written out here,
// f64 finite-difference gradients of each (FAVOR+ with the per-row query stabiliser and with a
// given key stabiliser), FAVOR+'s random matrix (orthogonal blocks, Gaussian row lengths,
// bitwise reproducible from its seed), its kernel estimate, the map composed with linear
// attention (gradients through both, and a Performer against exact softmax), bad input.
#include <gtest/gtest.h>

#include <cmath>

#include "attn/flash.h"
#include "common/check.h"
#include "common/gradcheck.h"
#include "linear_attn/feature_map.h"
#include "linear_attn_reference.h"

using namespace lctx;
using namespace lctx::test;
using linear_attn::FeatureKind;
using linear_attn::FeatureMap;

namespace {

Tensor randn(const Shape& shape, uint64_t seed, double std = 1.0) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0, 0.0, std);
  return t;
}

double dot_loss(const Tensor& a, const Tensor& w) {
  const auto va = a.to_vector(), vw = w.to_vector();
  double s = 0;
  for (size_t i = 0; i < va.size(); ++i) s += va[i] * vw[i];
  return s;
}

struct MapCase {
  std::string name;
  FeatureKind kind;
  int64_t features = 0;  // favor: m
  bool key = false;      // favor: a given (key) stabiliser instead of the per-row max
};
inline void PrintTo(const MapCase& c, std::ostream* os) { *os << c.name; }

std::vector<MapCase> map_cases() {
  return {{"identity", FeatureKind::identity},
          {"elu_plus_one", FeatureKind::elu_plus_one},
          {"relu", FeatureKind::relu},
          {"favor_query", FeatureKind::favor, 12, false},
          {"favor_key", FeatureKind::favor, 12, true},
          {"favor_m5", FeatureKind::favor, 5, false}};
}

FeatureMap make_map(const MapCase& c, int64_t D, DType dt = DType::f64) {
  FeatureMap fm{.kind = c.kind, .projection = {}};
  if (c.kind == FeatureKind::favor) fm.projection = linear_attn::favor_projection(D, 99, c.features, dt);
  return fm;
}

// phi from its formula, row by row, in f64 (the FAVOR+ stabiliser: given or the row max).
std::vector<double> naive_map(const MapCase& c, const FeatureMap& fm, const Tensor& x, const Tensor& stab) {
  const int64_t H = x.size(2), D = x.size(3), rows = x.numel() / D;
  const auto xv = x.contiguous().to_vector();
  std::vector<double> out;
  if (c.kind != FeatureKind::favor) {
    for (double v : xv)
      out.push_back(c.kind == FeatureKind::identity ? v
                    : c.kind == FeatureKind::relu   ? std::max(v, 0.0)
                                                    : (v > 0 ? v + 1 : std::exp(v)));
    return out;
  }
  const auto w = fm.projection.to_vector();
  const auto sv = stab.defined() ? stab.to_vector() : std::vector<double>();
  const int64_t m = fm.projection.size(0);
  const double scale = std::pow(static_cast<double>(D), -0.25);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> u(m);
    double sq = 0;
    for (int64_t d = 0; d < D; ++d) sq += scale * xv[r * D + d] * scale * xv[r * D + d];
    for (int64_t i = 0; i < m; ++i) {
      u[i] = -sq / 2;
      for (int64_t d = 0; d < D; ++d) u[i] += w[i * D + d] * scale * xv[r * D + d];
    }
    const int64_t b = r / (x.size(1) * H), h = r % H;
    const double cst = stab.defined() ? sv[b * H + h] : *std::max_element(u.begin(), u.end());
    for (int64_t i = 0; i < m; ++i) out.push_back(std::exp(u[i] - cst) / std::sqrt(static_cast<double>(m)));
  }
  return out;
}

class FeatureMapTest : public testing::TestWithParam<MapCase> {};

TEST_P(FeatureMapTest, MatchesFormulaF64AndF32) {
  const MapCase& c = GetParam();
  const int64_t D = 6;
  // A strided input: every other head of a [B, S, 2H, D] tensor.
  const Tensor wide = randn({2, 9, 6, D}, 3);
  const Tensor x = wide.slice(2, 0, 3);
  for (DType dt : {DType::f64, DType::f32}) {
    const FeatureMap fm = make_map(c, D, dt);
    const Tensor xd = dt == DType::f64 ? x : x.to(dt);
    const Tensor stab = c.key ? linear_attn::favor_key_stabiliser(xd, fm) : Tensor();
    const Tensor phi = linear_attn::feature_map_forward(xd, fm, stab);
    EXPECT_EQ(phi.shape(), (Shape{2, 9, 3, linear_attn::feature_dim(fm, D)}));
    const auto want = naive_map(c, make_map(c, D), x, stab.defined() ? stab.to(DType::f64) : Tensor());
    EXPECT_LE(rel_error(phi, Tensor::from_vector(phi.shape(), want, DType::f64)), dt == DType::f64 ? 1e-14 : 1e-6)
        << dtype_name(dt);
    if (c.kind == FeatureKind::favor) {
      // The per-row stabiliser makes each row's largest feature exactly 1/sqrt(m); the key
      // stabiliser is the max exponent rounded up to an integer, so the largest key feature
      // lies in (e^-1, 1] / sqrt(m).
      double mx = 0;
      for (double v : phi.to_vector()) mx = std::max(mx, v);
      const double top = mx * std::sqrt(static_cast<double>(c.features));
      if (!c.key) EXPECT_NEAR(top, 1.0, 1e-6);
      if (c.key) {
        EXPECT_GT(top, std::exp(-1.0) - 1e-6);
        EXPECT_LE(top, 1.0 + 1e-6);
        for (double v : stab.to_vector()) EXPECT_EQ(v, std::ceil(v));
      }
    }
  }
}

TEST_P(FeatureMapTest, GradCheck) {
  const MapCase& c = GetParam();
  const int64_t D = 4;
  const FeatureMap fm = make_map(c, D);
  Tensor x = randn({2, 5, 2, D}, 7);
  // The key stabiliser is an input of the map, held at its value for the unperturbed x.
  const Tensor stab = c.key ? linear_attn::favor_key_stabiliser(x, fm) : Tensor();
  const Tensor w = randn({2, 5, 2, linear_attn::feature_dim(fm, D)}, 8);
  const Tensor dx = linear_attn::feature_map_backward(x, w, fm, stab);
  expect_grad_close([&] { return dot_loss(linear_attn::feature_map_forward(x, fm, stab), w); }, x, dx, "dx", 1e-6,
                    1e-8);
}

INSTANTIATE_TEST_SUITE_P(Maps, FeatureMapTest, testing::ValuesIn(map_cases()),
                         [](const testing::TestParamInfo<MapCase>& i) { return i.param.name; });

// W: each block of D rows orthogonal, row lengths Gaussian (mean sqrt(D) roughly), the same bits
// for the same seed, other bits for another seed; m not a multiple of D cuts the last block.
TEST(FavorProjection, OrthogonalBlocksReproducibleFromSeed) {
  const int64_t D = 8, m = 20;
  const Tensor w = linear_attn::favor_projection(D, 5, m, DType::f64);
  ASSERT_EQ(w.shape(), (Shape{m, D}));
  const auto v = w.to_vector();
  double mean_len = 0;
  for (int64_t i = 0; i < m; ++i) {
    double li = 0;
    for (int64_t d = 0; d < D; ++d) li += v[i * D + d] * v[i * D + d];
    mean_len += std::sqrt(li) / m;
    for (int64_t j = i / D * D; j < i; ++j) {  // earlier rows of the same block
      double ij = 0, lj = 0;
      for (int64_t d = 0; d < D; ++d) {
        ij += v[i * D + d] * v[j * D + d];
        lj += v[j * D + d] * v[j * D + d];
      }
      EXPECT_LE(std::abs(ij) / std::sqrt(li * lj), 1e-12) << i << " " << j;
    }
  }
  EXPECT_GT(mean_len, 0.6 * std::sqrt(D));
  EXPECT_LT(mean_len, 1.4 * std::sqrt(D));
  EXPECT_EQ(max_abs_diff(w, linear_attn::favor_projection(D, 5, m, DType::f64)), 0.0);
  EXPECT_GT(max_abs_diff(w, linear_attn::favor_projection(D, 6, m, DType::f64)), 0.1);
  EXPECT_EQ(linear_attn::favor_projection(D, 5).shape(), (Shape{linear_attn::kFavorFeatures, D}));
  EXPECT_EQ(linear_attn::favor_projection(D, 5).dtype(), DType::f32);
}

// phi(q) . phi(k) e^{c_q + c_k} estimates exp(q . k / sqrt(D)) (the Performer's kernel):
// RMS relative error over all pairs (about 0.011 at this m).
TEST(FavorKernel, EstimatesSoftmaxKernel) {
  const int64_t D = 8, m = 16384, n = 16;
  const FeatureMap fm{.kind = FeatureKind::favor, .projection = linear_attn::favor_projection(D, 11, m, DType::f64)};
  const Tensor q = randn({1, n, 1, D}, 12, 0.5), k = randn({1, n, 1, D}, 13, 0.5);
  const Tensor kstab = linear_attn::favor_key_stabiliser(k, fm);
  const auto pq = linear_attn::feature_map_forward(q, fm).to_vector();
  const auto pk = linear_attn::feature_map_forward(k, fm, kstab).to_vector();
  const auto qv = q.to_vector(), kv = k.to_vector();
  const auto w = fm.projection.to_vector();
  const double s = std::pow(static_cast<double>(D), -0.25), ck = kstab.item();
  double sq_err = 0;
  for (int64_t i = 0; i < n; ++i) {
    // The query's row stabiliser from the definition: max_l w_l . q~ - |q~|^2 / 2.
    double cq = -INFINITY, sq = 0;
    for (int64_t d = 0; d < D; ++d) sq += s * s * qv[i * D + d] * qv[i * D + d];
    for (int64_t l = 0; l < m; ++l) {
      double u = -sq / 2;
      for (int64_t d = 0; d < D; ++d) u += w[l * D + d] * s * qv[i * D + d];
      cq = std::max(cq, u);
    }
    for (int64_t j = 0; j < n; ++j) {
      double est = 0, qk = 0;
      for (int64_t l = 0; l < m; ++l) est += pq[i * m + l] * pk[j * m + l];
      for (int64_t d = 0; d < D; ++d) qk += qv[i * D + d] * kv[j * D + d];
      sq_err += std::pow(est * std::exp(cq + ck) / std::exp(qk / std::sqrt(D)) - 1, 2);
    }
  }
  EXPECT_LT(std::sqrt(sq_err / (n * n)), 0.03);
}

// The key stabiliser of a sequence is the max of its pieces' (how pieces or ranks combine it).
TEST(FavorKernel, KeyStabiliserCombinesByMax) {
  const FeatureMap fm{.kind = FeatureKind::favor, .projection = linear_attn::favor_projection(4, 3, 16, DType::f64)};
  const Tensor k = randn({2, 30, 3, 4}, 21);
  const auto whole = linear_attn::favor_key_stabiliser(k, fm).to_vector();
  const auto a = linear_attn::favor_key_stabiliser(k.slice(1, 0, 11), fm).to_vector();
  const auto b = linear_attn::favor_key_stabiliser(k.slice(1, 11, 30), fm).to_vector();
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_EQ(whole[i], std::max(a[i], b[i]));
}

// Gradients through phi and linear attention together: L = sum(W * o(phi(q), phi(k), v)).
class FeatureMapWithAttention : public testing::TestWithParam<MapCase> {};

TEST_P(FeatureMapWithAttention, GradCheckThroughBoth) {
  const MapCase& c = GetParam();
  const int64_t D = 3;
  const FeatureMap fm = make_map(c, D);
  Tensor q = randn({1, 7, 2, D}, 31), k = randn({1, 7, 2, D}, 32), v = randn({1, 7, 2, 2}, 33);
  const Tensor w = randn({1, 7, 2, 2}, 34);
  // Normalised, except for the identity map (its features have no sign: the denominator could vanish).
  const linear_attn::LinearAttnOptions opts{
      .decay = linear_attn::Decay::none,
      .normalize = c.kind == FeatureKind::identity ? linear_attn::Normalize::off : linear_attn::Normalize::on,
      .chunk = 3};
  const Tensor kstab = c.key ? linear_attn::favor_key_stabiliser(k, fm) : Tensor();
  auto attn = [&] {
    return linear_attn::LinearAttnInputs{
        linear_attn::feature_map_forward(q, fm), linear_attn::feature_map_forward(k, fm, kstab), v, {}, {}};
  };
  const auto in = attn();
  const auto g = linear_attn::linear_attn_backward(in, w, Tensor(), opts);
  const Tensor dq = linear_attn::feature_map_backward(q, g.dq, fm);
  const Tensor dk = linear_attn::feature_map_backward(k, g.dk, fm, kstab);
  auto loss = [&] { return dot_loss(linear_attn::linear_attn_forward(attn(), opts).o, w); };
  expect_grad_close(loss, q, dq, "dq", 1e-6, 1e-7);
  expect_grad_close(loss, k, dk, "dk", 1e-6, 1e-7);
  expect_grad_close(loss, v, g.dv, "dv", 1e-6, 1e-7);
}

INSTANTIATE_TEST_SUITE_P(Maps, FeatureMapWithAttention, testing::ValuesIn(map_cases()),
                         [](const testing::TestParamInfo<MapCase>& i) { return i.param.name; });

// A Performer (FAVOR+ features, normalised non-causal linear attention) approximates exact
// softmax attention; the error shrinks as m grows (logits kept small: the estimator's variance
// grows like exp(|q~ + k~|^2)).
TEST(Performer, ApproximatesSoftmaxAttention) {
  const int64_t D = 8, S = 48;
  const Tensor q = randn({1, S, 2, D}, 41, 0.3), k = randn({1, S, 2, D}, 42, 0.3), v = randn({1, S, 2, D}, 43);
  const Tensor exact = attn::flash_forward(q, k, v, {}).o;
  double prev = INFINITY;
  for (int64_t m : {16, 64, 256, 1024}) {
    const FeatureMap fm{.kind = FeatureKind::favor, .projection = linear_attn::favor_projection(D, 44, m, DType::f64)};
    const linear_attn::LinearAttnInputs in{
        linear_attn::feature_map_forward(q, fm),
        linear_attn::feature_map_forward(k, fm, linear_attn::favor_key_stabiliser(k, fm)),
        v,
        {},
        {}};
    const auto o = linear_attn::linear_attn_forward(
        in, {.mask = linear_attn::Mask::none, .normalize = linear_attn::Normalize::on, .eps = 0.0});
    const double err = rel_error(o.o, exact);
    std::printf("performer m=%lld: rel error vs softmax %.3e\n", static_cast<long long>(m), err);
    EXPECT_LT(err, prev) << m;
    prev = err;
  }
  EXPECT_LT(prev, 0.02);
}

TEST(FeatureMapErrors, BadInputsAreClearErrors) {
  const Tensor x = randn({1, 4, 2, 6}, 51);
  using linear_attn::feature_map_forward;
  expect_error([&] { feature_map_forward(x, {.kind = FeatureKind::favor, .projection = {}}); },
               {"projection [m, D] with D = 6", "undefined"});
  const Tensor w5 = linear_attn::favor_projection(5, 1, 16, DType::f64);
  expect_error([&] { feature_map_forward(x, {.kind = FeatureKind::favor, .projection = w5}); }, {"D = 6", "f64[16,5]"});
  const Tensor w6 = linear_attn::favor_projection(6, 1, 16, DType::f32);
  expect_error([&] { feature_map_forward(x, {.kind = FeatureKind::favor, .projection = w6}); },
               {"projection", "must have dtype f64"});
  const FeatureMap fav{.kind = FeatureKind::favor, .projection = linear_attn::favor_projection(6, 1, 16, DType::f64)};
  expect_error(
      [&] {
        feature_map_forward(x, fav, Tensor::zeros({1, 3}, DType::f64));
      },
      {"stabiliser has shape [1,3], expected [1,2]"});
  expect_error(
      [&] {
        feature_map_forward(x, {.kind = FeatureKind::relu, .projection = {}}, Tensor::zeros({1, 2}, DType::f64));
      },
      {"favor map only"});
  expect_error([&] { feature_map_forward(randn({4, 6}, 1), {}); }, {"must be [B, S, H, D]"});
  expect_error(
      [&] {
        linear_attn::feature_map_backward(x, randn({1, 4, 2, 5}, 1), fav);
      },
      {"dphi has shape [1,4,2,5], expected [1,4,2,16]"});
}

}  // namespace
