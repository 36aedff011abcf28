#include "ops/log_sigmoid.h"

#include "ops/activation.h"
#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

void check_wide(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  check_shape(op, name, t, x.shape());
  check_dtype(op, name, t, wide_dtype(x.dtype()));
  check_contiguous(op, name, t);
}

template <class T>
void cpu_forward(T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] = detail::log_sigmoid(x[i]);
}

template <class T>
void cpu_backward(T* dx, const T* dy, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * detail::sigmoid(-x[i]);
}

}  // namespace

void log_sigmoid_forward(Tensor& y, const Tensor& x, Stream s) {
  constexpr const char* op = "log_sigmoid_forward";
  detail::check_float_input(op, "x", x);
  check_same_device(op, {&y, &x});
  check_wide(op, "y", y, x);
  if (x.device().is_cuda()) return LCTX_OPS_CUDA(op, x, cuda::log_sigmoid_forward(y, x, s));
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op, [&] { cpu_forward(y.data<scalar_t>(), x.data<scalar_t>(), x.numel()); });
}

void log_sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& x, Stream s) {
  constexpr const char* op = "log_sigmoid_backward";
  detail::check_float_input(op, "x", x);
  check_same_device(op, {&dx, &dy, &x});
  check_wide(op, "dy", dy, x);
  check_shape(op, "dx", dx, x.shape());
  check_contiguous(op, "dx", dx);
  LCTX_CHECK(dx.dtype() == x.dtype() || dx.dtype() == wide_dtype(x.dtype()), op, ": dx ", dx.str(),
             " must have x's dtype or its wide dtype (x ", x.str(), ")");
  if (x.device().is_cuda()) return LCTX_OPS_CUDA(op, x, cuda::log_sigmoid_backward(dx, dy, x, s));
  LCTX_DISPATCH_CPU_FLOAT(
      x.dtype(), op, [&] { cpu_backward(dx.data<scalar_t>(), dy.data<scalar_t>(), x.data<scalar_t>(), x.numel()); });
}

}  // namespace lctx::ops
