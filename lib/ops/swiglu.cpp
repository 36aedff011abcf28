#include "ops/swiglu.h"

#include "ops/activation.h"
#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
void cpu_swiglu_forward(T* y, const T* x, int64_t rows, int64_t f) {
#pragma omp parallel for schedule(static) if (rows * f > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < f; ++i)
      y[r * f + i] = static_cast<T>(detail::swiglu<double>(x[r * 2 * f + i], x[r * 2 * f + f + i]));
}

template <class T>
void cpu_swiglu_backward(T* dx, const T* dy, const T* x, int64_t rows, int64_t f) {
#pragma omp parallel for schedule(static) if (rows * f > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < f; ++i) {
      double dg, du;
      detail::swiglu_grad<double>(x[r * 2 * f + i], x[r * 2 * f + f + i], dy[r * f + i], dg, du);
      dx[r * 2 * f + i] = static_cast<T>(dg);
      dx[r * 2 * f + f + i] = static_cast<T>(du);
    }
  }
}

// Validates in [..., 2F] against a [..., F] tensor; returns F.
int64_t check_packed(const char* op, const Tensor& in, const Tensor& half, const char* half_name) {
  detail::check_float_input(op, "in", in);
  LCTX_CHECK(in.dim() >= 1 && in.size(-1) % 2 == 0, op, ": in ", in.str(),
             " must be [..., 2F] (gate and up halves)");
  Shape hs = in.shape();
  hs.back() /= 2;
  check_shape(op, half_name, half, hs);
  check_dtype(op, half_name, half, in.dtype());
  check_contiguous(op, half_name, half);
  return hs.back();
}

}  // namespace

void swiglu_forward(Tensor& out, const Tensor& in, Stream s) {
  constexpr const char* op = "swiglu_forward";
  check_same_device(op, {&out, &in});
  const int64_t f = check_packed(op, in, out, "out");
  const int64_t rows = detail::rows_of(out);
  if (in.device().is_cuda()) return LCTX_OPS_CUDA(op, in, cuda::swiglu_forward(out, in, rows, f, s));
  LCTX_DISPATCH_CPU_FLOAT(in.dtype(), op,
                          [&] { cpu_swiglu_forward(out.data<scalar_t>(), in.data<scalar_t>(), rows, f); });

}

void swiglu_backward(Tensor& din, const Tensor& dout, const Tensor& in, Stream s) {
  constexpr const char* op = "swiglu_backward";
  check_same_device(op, {&din, &dout, &in});
  const int64_t f = check_packed(op, in, dout, "dout");
  check_like(op, "din", din, in);
  const int64_t rows = detail::rows_of(dout);
  if (in.device().is_cuda()) return LCTX_OPS_CUDA(op, in, cuda::swiglu_backward(din, dout, in, rows, f, s));
  LCTX_DISPATCH_CPU_FLOAT(in.dtype(), op, [&] {
    cpu_swiglu_backward(din.data<scalar_t>(), dout.data<scalar_t>(), in.data<scalar_t>(), rows, f);
  });

}

}  // namespace lctx::ops
