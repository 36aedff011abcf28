// The checks the selective-scan and SSD suites share, written once over an `Op` that names a
// recurrence's case, inputs and gradients (both structs have state0 / d_state0) and its calls:
//   Op::Case (B, S, name), Op::Inputs, Op::Grads, Op::fields (each input with its gradient
//   and role), Op::inputs(case, seed), Op::naive(case, in) -> {y, final_state},
//   Op::forward(in, case), Op::backward(in, dy, d_final_state, case), Op::y_shape(case),
//   Op::state_shape(case).
// The checks: forward against the naive f64 loop in f64 and f32; f64 central differences of
// every input through L = sum(y W) + sum(final_state Wf); two halves chained through the state
// equal one call, forward and backward; f32 against f64 with the errors printed.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>

#include "common/check.h"
#include "common/gradcheck.h"
#include "ssm_reference.h"

namespace lctx::test {

// token: [B, S, ...], cut with the sequence; param: summed over it; state: state0.
enum class Role { token, param, state };

template <class Inputs, class Grads>
struct Field {
  Tensor Inputs::*in;
  Tensor Grads::*grad;
  const char* name;
  Role role;
};

// Token inputs in dtype, the rest in its wide dtype.
template <class Op>
typename Op::Inputs to_dtype(const typename Op::Inputs& in, DType dt) {
  typename Op::Inputs out = in;
  for (const auto& f : Op::fields) out.*f.in = as(in.*f.in, f.role == Role::token ? dt : wide_dtype(dt));
  return out;
}

template <class Op>
void check_matches_naive(const typename Op::Case& c) {
  const auto in = Op::inputs(c, 3);
  const auto ref = Op::naive(c, in);
  for (DType dt : {DType::f64, DType::f32}) {
    const auto out = Op::forward(to_dtype<Op>(in, dt), c);
    EXPECT_EQ(out.y.dtype(), dt);
    EXPECT_EQ(out.final_state.dtype(), wide_dtype(dt));
    const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
    EXPECT_LE(rel_error(out.y, ref.y), tol) << dtype_name(dt);
    EXPECT_LE(rel_error(out.final_state, ref.final_state), tol) << dtype_name(dt);
  }
}

// L = sum(y * W) + sum(final_state * Wf): dy = W, d_final_state = Wf.
template <class Op>
struct Loss {
  Tensor w, wf;
  Loss(const typename Op::Case& c, uint64_t seed)
      : w(normal(Op::y_shape(c), seed)), wf(normal(Op::state_shape(c), seed + 1)) {}
  double operator()(const typename Op::Inputs& in, const typename Op::Case& c) const {
    const auto out = Op::forward(in, c);
    return weighted_sum({{out.y, w}, {out.final_state, wf}});
  }
};

// Absent inputs have no gradient, except state0: the gradient of zeros, checked at zeros.
template <class Op>
void check_grads(const typename Op::Case& c) {
  auto in = Op::inputs(c, 11);
  const Loss<Op> loss(c, 19);
  const auto g = Op::backward(in, loss.w, loss.wf, c);
  if (!in.state0.defined()) in.state0 = Tensor::zeros(Op::state_shape(c), DType::f64);
  auto f = [&] { return loss(in, c); };
  for (const auto& fd : Op::fields) {
    Tensor& x = in.*fd.in;
    const Tensor& gx = g.*fd.grad;
    EXPECT_EQ(gx.defined(), x.defined()) << fd.name;
    if (x.defined() && gx.defined()) expect_grad_close(f, x, gx, fd.name, 1e-6, 1e-7);
  }
}

template <class Op>
void check_chaining(const typename Op::Case& c) {
  if (c.S < 2) GTEST_SKIP() << "needs two halves";
  const auto in = Op::inputs(c, 23);
  const Loss<Op> loss(c, 29);
  const int64_t h = c.S / 2 + 1;
  auto half = [&](int64_t t0, int64_t t1, const Tensor& state0) {
    auto p = in;
    for (const auto& f : Op::fields)
      if (f.role == Role::token) p.*f.in = rows(in.*f.in, t0, t1);
    p.state0 = state0;
    return p;
  };
  const auto whole = Op::forward(in, c);
  const auto in1 = half(0, h, in.state0);
  const auto out1 = Op::forward(in1, c);
  const auto in2 = half(h, c.S, out1.final_state);
  const auto out2 = Op::forward(in2, c);
  EXPECT_LE(rel_error(out1.y, rows(whole.y, 0, h)), 1e-13);
  EXPECT_LE(rel_error(out2.y, rows(whole.y, h, c.S)), 1e-13);
  EXPECT_LE(rel_error(out2.final_state, whole.final_state), 1e-13);

  const auto g = Op::backward(in, loss.w, loss.wf, c);
  const auto g2 = Op::backward(in2, rows(loss.w, h, c.S), loss.wf, c);
  const auto g1 = Op::backward(in1, rows(loss.w, 0, h), g2.d_state0, c);
  for (const auto& f : Op::fields) {
    const Tensor &a = g1.*f.grad, &b = g2.*f.grad, &whole_g = g.*f.grad;
    if (!whole_g.defined()) continue;
    if (f.role == Role::token) {
      EXPECT_LE(rel_error(a, rows(whole_g, 0, h)), 1e-12) << f.name;
      EXPECT_LE(rel_error(b, rows(whole_g, h, c.S)), 1e-12) << f.name;
    } else if (f.role == Role::param) {
      EXPECT_LE(rel_error(plus(a, b), whole_g), 1e-12) << f.name;
    } else {
      EXPECT_LE(rel_error(a, whole_g), 1e-12) << f.name;
    }
  }
}

// f32 against f64 on case `c`: output, final state and every gradient within `tol`; prints them.
template <class Op>
void check_f32_near_f64(const typename Op::Case& c, double tol) {
  const auto in = Op::inputs(c, 31);
  const Loss<Op> loss(c, 37);
  const auto o64 = Op::forward(in, c);
  const auto o32 = Op::forward(to_dtype<Op>(in, DType::f32), c);
  const auto g64 = Op::backward(in, loss.w, loss.wf, c);
  const auto g32 = Op::backward(to_dtype<Op>(in, DType::f32), loss.w.to(DType::f32), loss.wf.to(DType::f32), c);
  const double ey = rel_error(o32.y, o64.y), es = rel_error(o32.final_state, o64.final_state);
  std::printf("%s f32 vs f64 relative error: y %.2e, final_state %.2e", c.name.c_str(), ey, es);
  EXPECT_LE(ey, tol);
  EXPECT_LE(es, tol);
  for (const auto& f : Op::fields) {
    const double e = rel_error(g32.*f.grad, g64.*f.grad);
    std::printf(", d%s %.2e", f.name, e);
    EXPECT_LE(e, 10 * tol) << f.name;
  }
  std::printf("\n");
}

}  // namespace lctx::test
