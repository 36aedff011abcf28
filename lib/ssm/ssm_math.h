// Scalar math the state-space ops share (selective scan, SSD, causal conv1d), on the CPU and,
// later, in their CUDA kernels: dt = softplus(dt_raw + dt_bias) with its derivative, and the
// SiLU gate/activation with its derivative. Internal to lctx::ssm.
#pragma once
#include <cmath>

#include "core/strided.h"  // LCTX_HD

namespace lctx::ssm::detail {

// Above this argument softplus(v) = v to working precision (mamba_ssm's threshold).
constexpr double kSoftplusLinear = 20.0;

template <class T>
LCTX_HD inline T sigmoid(T v) {
  return T(1) / (T(1) + exp(-v));
}

// softplus(v) = log(1 + e^v); d/dv = sigmoid(v).
template <class T>
LCTX_HD inline T softplus(T v) {
  return v > T(kSoftplusLinear) ? v : log1p(exp(v));
}

// silu(v) = v sigmoid(v); d/dv = sigmoid(v) (1 + v (1 - sigmoid(v))).
template <class T>
LCTX_HD inline T silu(T v) {
  return v * sigmoid(v);
}
template <class T>
LCTX_HD inline T silu_grad(T v) {
  const T s = sigmoid(v);
  return s * (T(1) + v * (T(1) - s));
}

}  // namespace lctx::ssm::detail
