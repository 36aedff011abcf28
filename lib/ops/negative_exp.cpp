#include "ops/negative_exp.h"

#include <cmath>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
void cpu_forward(T* y, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = -std::exp(x[i]);
}

template <class T, class G>
void cpu_backward(G* dx, const T* dy, const T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = static_cast<G>(dy[i] * y[i]);
}

}  // namespace

void negative_exp_forward(Tensor& y, const Tensor& x, Stream s) {
  constexpr const char* op = "negative_exp_forward";
  detail::check_float_input(op, "x", x);
  check_same_device(op, {&y, &x});
  check_shape(op, "y", y, x.shape());
  check_dtype(op, "y", y, wide_dtype(x.dtype()));
  check_contiguous(op, "y", y);
  if (x.device().is_cuda()) return LCTX_OPS_CUDA(op, x, cuda::negative_exp_forward(y, x, s));
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op, [&] { cpu_forward(y.data<scalar_t>(), x.data<scalar_t>(), x.numel()); });
}

void negative_exp_backward(Tensor& dx, const Tensor& dy, const Tensor& y, Stream s) {
  constexpr const char* op = "negative_exp_backward";
  detail::check_float_input(op, "y", y);
  LCTX_CHECK(y.dtype() == wide_dtype(y.dtype()), op, ": y ", y.str(), " must be the forward's wide (f32/f64) output");
  check_same_device(op, {&dx, &dy, &y});
  check_like(op, "dy", dy, y);
  check_shape(op, "dx", dx, y.shape());
  check_contiguous(op, "dx", dx);
  const DType d = dx.dtype();
  LCTX_CHECK(d == y.dtype() || (y.dtype() == DType::f32 && (d == DType::bf16 || d == DType::f16)), op, ": dx ",
             dx.str(), " must have y's dtype or a narrower float dtype widening to it (y ", y.str(), ")");
  if (y.device().is_cuda()) return LCTX_OPS_CUDA(op, y, cuda::negative_exp_backward(dx, dy, y, s));
  LCTX_DISPATCH_CPU_FLOAT(y.dtype(), op, [&] {
    check_dtype(op, "dx", dx, y.dtype());
    cpu_backward(dx.data<scalar_t>(), dy.data<scalar_t>(), y.data<scalar_t>(), y.numel());
  });
}

}  // namespace lctx::ops
