#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/activation.h"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

// dout == nullptr: forward (y = gelu(x)); otherwise backward (y = dout * gelu'(x)).
template <class T>
__global__ void gelu_kernel(T* __restrict__ y, const T* __restrict__ dout, const T* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_f32(x[i]);
    y[i] = from_f32<T>(dout ? to_f32(dout[i]) * detail::gelu_grad<float>(v) : detail::gelu<float>(v));
  }
}

void launch(Tensor& y, const Tensor* dout, const Tensor& x, Stream s) {
  const int64_t n = x.numel();
  if (n == 0) return;
  set_device(x);
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "gelu", [&] {
    gelu_kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(y.raw()), dout ? static_cast<const scalar_t*>(dout->raw()) : nullptr,
        static_cast<const scalar_t*>(x.raw()), n);
  });
  LCTX_CUDA_CHECK_LAUNCH("gelu_kernel");
}

}  // namespace

void gelu_forward(Tensor& out, const Tensor& x, Stream s) { launch(out, nullptr, x, s); }
void gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, Stream s) { launch(dx, &dout, x, s); }

}  // namespace lctx::ops::cuda
