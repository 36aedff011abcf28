#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"
#include "ops/negative_exp.h"

namespace lctx::ops::cuda {

namespace {

template <class T>
__global__ void forward_kernel(float* __restrict__ y, const T* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = -expf(to_f32(x[i]));
}

template <class G>
__global__ void backward_kernel(G* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ y,
                                int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = from_f32<G>(dy[i] * y[i]);
}

}  // namespace

void negative_exp_forward(Tensor& y, const Tensor& x, Stream s) {
  const int64_t n = x.numel();
  if (n == 0) return;
  set_device(x);
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "negative_exp_forward", [&] {
    forward_kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(y.data<float>(),
                                                                  static_cast<const scalar_t*>(x.raw()), n);
  });
  LCTX_CUDA_CHECK_LAUNCH("negative_exp forward_kernel");
}

void negative_exp_backward(Tensor& dx, const Tensor& dy, const Tensor& y, Stream s) {
  const int64_t n = y.numel();
  if (n == 0) return;
  set_device(y);
  LCTX_DISPATCH_CUDA_FLOAT(dx.dtype(), "negative_exp_backward", [&] {
    backward_kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(static_cast<scalar_t*>(dx.raw()), dy.data<float>(),
                                                                   y.data<float>(), n);
  });
  LCTX_CUDA_CHECK_LAUNCH("negative_exp backward_kernel");
}

}  // namespace lctx::ops::cuda
