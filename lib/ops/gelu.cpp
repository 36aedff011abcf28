#include "ops/gelu.h"

#include "ops/activation.h"
#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
void cpu_gelu(T* y, const T* dout, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i)
    y[i] = static_cast<T>(dout ? dout[i] * detail::gelu_grad<double>(x[i]) : detail::gelu<double>(x[i]));
}

}  // namespace

void gelu_forward(Tensor& out, const Tensor& x, Stream s) {
  constexpr const char* op = "gelu_forward";
  detail::check_float_input(op, "x", x);
  check_same_device(op, {&out, &x});
  check_like(op, "out", out, x);
  if (x.device().is_cuda()) return LCTX_OPS_CUDA(op, x, cuda::gelu_forward(out, x, s));
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op, [&] {
    cpu_gelu<scalar_t>(out.data<scalar_t>(), nullptr, x.data<scalar_t>(), x.numel());
  });
}

void gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, Stream s) {
  constexpr const char* op = "gelu_backward";
  detail::check_float_input(op, "x", x);
  check_same_device(op, {&dx, &dout, &x});
  check_like(op, "dout", dout, x);
  check_like(op, "dx", dx, x);
  if (x.device().is_cuda()) return LCTX_OPS_CUDA(op, x, cuda::gelu_backward(dx, dout, x, s));
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op, [&] {
    cpu_gelu<scalar_t>(dx.data<scalar_t>(), dout.data<scalar_t>(), x.data<scalar_t>(), x.numel());
  });
}

}  // namespace lctx::ops
