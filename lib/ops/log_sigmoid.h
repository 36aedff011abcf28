// Log-sigmoid, elementwise on any contiguous shape: y = log sigmoid(x) = min(x, 0) - log1p(e^-|x|)
// (no overflow for any x), the log of a decay in (0, 1) from an unconstrained logit (learned and
// data-dependent decays of linear attention). y is in wide_dtype(x): log-decays are summed over
// whole sequences, so they are kept wide. Backward: dx = dy sigmoid(-x), dy in wide_dtype(x),
// dx in x's dtype or wide_dtype(x) (a parameter's gradient), overwritten.
// CPU: f32/f64; CUDA: f32/bf16/f16 with fp32 math.
#pragma once
#include <cmath>

#include "core/strided.h"  // LCTX_HD
#include "core/tensor.h"

namespace lctx::ops {

void log_sigmoid_forward(Tensor& y, const Tensor& x, Stream s = {});

void log_sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& x, Stream s = {});

namespace detail {
// The scalar map, shared by the CPU loop and the kernel.
template <class A>
LCTX_HD inline A log_sigmoid(A g) {
  return (g < A(0) ? g : A(0)) - log1p(exp(-fabs(g)));
}
}  // namespace detail

}  // namespace lctx::ops
