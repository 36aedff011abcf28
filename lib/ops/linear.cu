#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {
template <class T>
__global__ void broadcast_rows_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t n, int64_t cols) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = bias[i % cols];
}
}  // namespace

void broadcast_rows(Tensor& y, const Tensor& bias, int64_t rows, int64_t cols, Stream s) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  set_device(y);
  LCTX_DISPATCH_CUDA_FLOAT(y.dtype(), "linear_forward", [&] {
    broadcast_rows_kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(y.raw()), static_cast<const scalar_t*>(bias.raw()), n, cols);
  });
  LCTX_CUDA_CHECK_LAUNCH("broadcast_rows_kernel");
}

}  // namespace lctx::ops::cuda
