// Linformer against a naive f64 reference written here (projections and softmax attention
// from the definition), f64 finite-difference gradients of q, k, v, E and F, zero gradients
// for the columns of E, F beyond the sequence, f32 against f64, bad input.
#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "common/gradcheck.h"
#include "linear_attn/linformer.h"
#include "linear_attn_reference.h"

using namespace lctx;
using namespace lctx::test;
using linear_attn::LinformerInputs;

namespace {

struct LinformerCase {
  std::string name;
  int64_t B = 1, S = 12, n = 16, kp = 4;
  int Hq = 2, Hkv = 2, D = 4;
  float scale = 0.0f;
};
inline void PrintTo(const LinformerCase& c, std::ostream* os) { *os << c.name; }
std::string lf_name(const testing::TestParamInfo<LinformerCase>& i) { return i.param.name; }

LinformerInputs make_inputs(const LinformerCase& c, uint64_t seed) {
  LinformerInputs in{Tensor::empty({c.B, c.S, c.Hq, c.D}, DType::f64),
                     Tensor::empty({c.B, c.S, c.Hkv, c.D}, DType::f64),
                     Tensor::empty({c.B, c.S, c.Hkv, c.D}, DType::f64), Tensor::empty({c.kp, c.n}, DType::f64),
                     Tensor::empty({c.kp, c.n}, DType::f64)};
  int i = 0;
  for (Tensor* t : {&in.q, &in.k, &in.v}) rng_normal(*t, seed + i++, 0);
  for (Tensor* t : {&in.e, &in.f}) rng_normal(*t, seed + i++, 0, 0.0, 1.0 / std::sqrt(static_cast<double>(c.S)));
  return in;
}

// o[b, i, h] = sum_r softmax_r(scale q_i . K~_r) V~_r with K~_r = sum_{s<S} E[r, s] k_s.
Tensor naive_linformer(const LinformerCase& c, const LinformerInputs& in) {
  const auto q = in.q.to_vector(), k = in.k.to_vector(), v = in.v.to_vector(), e = in.e.to_vector(),
             f = in.f.to_vector();
  const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.D));
  std::vector<double> o(c.B * c.S * c.Hq * c.D);
  for (int64_t b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h) {
      const int hk = h / (c.Hq / c.Hkv);
      std::vector<double> kp(c.kp * c.D, 0.0), vp(c.kp * c.D, 0.0);
      for (int64_t r = 0; r < c.kp; ++r)
        for (int64_t s = 0; s < c.S; ++s)
          for (int d = 0; d < c.D; ++d) {
            kp[r * c.D + d] += e[r * c.n + s] * k[((b * c.S + s) * c.Hkv + hk) * c.D + d];
            vp[r * c.D + d] += f[r * c.n + s] * v[((b * c.S + s) * c.Hkv + hk) * c.D + d];
          }
      for (int64_t i = 0; i < c.S; ++i) {
        std::vector<double> sc(c.kp);
        double mx = -INFINITY, sum = 0;
        for (int64_t r = 0; r < c.kp; ++r) {
          sc[r] = 0;
          for (int d = 0; d < c.D; ++d) sc[r] += q[((b * c.S + i) * c.Hq + h) * c.D + d] * kp[r * c.D + d] * scale;
          mx = std::max(mx, sc[r]);
        }
        for (auto& x : sc) sum += (x = std::exp(x - mx));
        for (int64_t r = 0; r < c.kp; ++r)
          for (int d = 0; d < c.D; ++d) o[((b * c.S + i) * c.Hq + h) * c.D + d] += sc[r] / sum * vp[r * c.D + d];
      }
    }
  return Tensor::from_vector({c.B, c.S, c.Hq, c.D}, o, DType::f64);
}

class Linformer : public testing::TestWithParam<LinformerCase> {};

TEST_P(Linformer, MatchesNaive) {
  const LinformerCase& c = GetParam();
  const LinformerInputs in = make_inputs(c, 3);
  const Tensor ref = naive_linformer(c, in);
  const linear_attn::LinformerOptions opts{.softmax_scale = c.scale};
  for (DType dt : {DType::f64, DType::f32}) {
    const LinformerInputs ind{in.q.to(dt), in.k.to(dt), in.v.to(dt), in.e.to(dt), in.f.to(dt)};
    const Tensor o = linear_attn::linformer_forward(ind, opts);
    EXPECT_EQ(o.dtype(), dt);
    EXPECT_LE(rel_error(o, ref), dt == DType::f64 ? 1e-13 : 2e-6) << dtype_name(dt);
  }
}

TEST_P(Linformer, GradCheck) {
  const LinformerCase& c = GetParam();
  LinformerInputs in = make_inputs(c, 5);
  Tensor w = Tensor::empty({c.B, c.S, c.Hq, c.D}, DType::f64);
  rng_normal(w, 9, 0);
  const linear_attn::LinformerOptions opts{.softmax_scale = c.scale};
  const auto g = linear_attn::linformer_backward(in, w, opts);
  const auto wv = w.to_vector();
  auto loss = [&] {
    const auto o = linear_attn::linformer_forward(in, opts).to_vector();
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * wv[i];
    return s;
  };
  expect_grad_close(loss, in.q, g.dq, "dq", 1e-6, 1e-8);
  expect_grad_close(loss, in.k, g.dk, "dk", 1e-6, 1e-8);
  expect_grad_close(loss, in.v, g.dv, "dv", 1e-6, 1e-8);
  expect_grad_close(loss, in.e, g.de, "de", 1e-6, 1e-8);
  expect_grad_close(loss, in.f, g.df, "df", 1e-6, 1e-8);
  // Columns of E, F beyond the sequence are not used: exactly zero gradient.
  for (const Tensor* d : {&g.de, &g.df}) {
    const Tensor tail = d->slice(1, c.S, c.n);
    EXPECT_EQ(max_abs_diff(tail, Tensor::zeros(tail.shape(), DType::f64)), 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Linformer,
    testing::Values(
        LinformerCase{.name = "full_n", .B = 2, .S = 8, .n = 8, .kp = 3, .D = 3},
        LinformerCase{.name = "shorter_than_n", .B = 1, .S = 9, .n = 16, .kp = 4, .Hq = 1, .Hkv = 1, .D = 5},
        LinformerCase{.name = "gqa", .B = 1, .S = 11, .n = 12, .kp = 2, .Hq = 4, .Hkv = 2, .D = 3},
        LinformerCase{
            .name = "k_gt_S_scale", .B = 2, .S = 5, .n = 8, .kp = 7, .Hq = 2, .Hkv = 1, .D = 4, .scale = 0.6f}),
    lf_name);

TEST(LinformerErrors, BadInputsAreClearErrors) {
  const LinformerCase c{.name = "bad", .B = 1, .S = 20, .n = 16, .kp = 4};
  const LinformerInputs in = make_inputs(c, 7);
  expect_error([&] { linear_attn::linformer_forward(in, {}); },
               {"linformer_forward", "sequence length S = 20", "f64[1,20,2,4]", "n = 16", "e f64[4,16]"});
  expect_error([&] { linear_attn::linformer_backward(in, in.q, {}); }, {"linformer_backward", "S = 20", "n = 16"});
  LinformerInputs bad = make_inputs({.name = "ok", .S = 8, .n = 16, .kp = 4}, 7);
  bad.f = Tensor::zeros({3, 16}, DType::f64);
  expect_error([&] { linear_attn::linformer_forward(bad, {}); }, {"f has shape [3,16], expected [4,16]"});
  bad = make_inputs({.name = "ok", .S = 8, .n = 16, .kp = 4}, 7);
  bad.e = Tensor();
  expect_error([&] { linear_attn::linformer_forward(bad, {}); }, {"e must be [k, n]"});
  bad = make_inputs({.name = "ok", .S = 8, .n = 16, .kp = 4}, 7);
  bad.v = Tensor::zeros({1, 7, 2, 4}, DType::f64);
  expect_error([&] { linear_attn::linformer_forward(bad, {}); }, {"v has shape [1,7,2,4], expected [1,8,2,4]"});
}

}  // namespace
