// Scalar math of the activations (SwiGLU, GELU) shared by the CPU references and the CUDA
// kernels, so both evaluate the same formulas. Internal to lctx::ops.
#pragma once
#include <cmath>

#ifdef __CUDACC__
#define LCTX_OPS_HD __host__ __device__ __forceinline__
#else
#define LCTX_OPS_HD inline
#endif

namespace lctx::ops::detail {

template <class A>
LCTX_OPS_HD A sigmoid(A g) {
  return A(1) / (A(1) + exp(-g));
}

// silu(g) * u, and its partials d/dg, d/du.
template <class A>
LCTX_OPS_HD A swiglu(A g, A u) {
  return g * sigmoid(g) * u;
}
template <class A>
LCTX_OPS_HD void swiglu_grad(A g, A u, A dy, A& dg, A& du) {
  const A sg = sigmoid(g);
  du = dy * g * sg;
  dg = dy * u * sg * (A(1) + g * (A(1) - sg));
}

constexpr double kGeluK0 = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluK1 = 0.044715;

template <class A>
LCTX_OPS_HD A gelu(A x) {
  return A(0.5) * x * (A(1) + tanh(A(kGeluK0) * (x + A(kGeluK1) * x * x * x)));
}
template <class A>
LCTX_OPS_HD A gelu_grad(A x) {
  const A t = tanh(A(kGeluK0) * (x + A(kGeluK1) * x * x * x));
  return A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * A(kGeluK0) * (A(1) + A(3 * kGeluK1) * x * x);
}

}  // namespace lctx::ops::detail
