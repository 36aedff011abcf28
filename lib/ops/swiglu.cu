#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/activation.h"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

template <class T>
__global__ void swiglu_forward_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t n, int64_t f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / f, c = i % f;
    const T* row = in + r * 2 * f;
    out[i] = from_f32<T>(detail::swiglu<float>(to_f32(row[c]), to_f32(row[f + c])));
  }
}

template <class T>
__global__ void swiglu_backward_kernel(T* __restrict__ din, const T* __restrict__ dout, const T* __restrict__ in,
                                       int64_t n, int64_t f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / f, c = i % f;
    const T* row = in + r * 2 * f;
    float dg, du;
    detail::swiglu_grad<float>(to_f32(row[c]), to_f32(row[f + c]), to_f32(dout[i]), dg, du);
    din[r * 2 * f + c] = from_f32<T>(dg);
    din[r * 2 * f + f + c] = from_f32<T>(du);
  }
}

}  // namespace

void swiglu_forward(Tensor& out, const Tensor& in, int64_t rows, int64_t f, Stream s) {
  const int64_t n = rows * f;
  if (n == 0) return;
  set_device(in);
  LCTX_DISPATCH_CUDA_FLOAT(in.dtype(), "swiglu_forward", [&] {
    swiglu_forward_kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(out.raw()), static_cast<const scalar_t*>(in.raw()), n, f);
  });
  LCTX_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

void swiglu_backward(Tensor& din, const Tensor& dout, const Tensor& in, int64_t rows, int64_t f, Stream s) {
  const int64_t n = rows * f;
  if (n == 0) return;
  set_device(in);
  LCTX_DISPATCH_CUDA_FLOAT(in.dtype(), "swiglu_backward", [&] {
    swiglu_backward_kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(din.raw()), static_cast<const scalar_t*>(dout.raw()),
        static_cast<const scalar_t*>(in.raw()), n, f);
  });
  LCTX_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace lctx::ops::cuda
