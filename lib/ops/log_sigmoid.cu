#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/activation.h"
#include "ops/cuda_ops.h"
#include "ops/log_sigmoid.h"

namespace lctx::ops::cuda {

namespace {

// dy == nullptr: forward (y = log sigmoid(x), f32); otherwise backward (y = dy sigmoid(-x), G).
template <class T, class G>
__global__ void log_sigmoid_kernel(G* __restrict__ y, const float* __restrict__ dy, const T* __restrict__ x,
                                   int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_f32(x[i]);
    y[i] = from_f32<G>(dy ? dy[i] * detail::sigmoid(-v) : detail::log_sigmoid(v));
  }
}

// y: f32 (forward) or dx in x's dtype or f32 (backward).
void launch(Tensor& y, const Tensor* dy, const Tensor& x, Stream s) {
  const int64_t n = x.numel();
  if (n == 0) return;
  set_device(x);
  const float* g = dy ? dy->data<float>() : nullptr;
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "log_sigmoid", [&] {
    const auto* xp = static_cast<const scalar_t*>(x.raw());
    if (y.dtype() == DType::f32)
      log_sigmoid_kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(y.data<float>(), g, xp, n);
    else
      log_sigmoid_kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(static_cast<scalar_t*>(y.raw()), g, xp, n);
  });
  LCTX_CUDA_CHECK_LAUNCH("log_sigmoid_kernel");
}

}  // namespace

void log_sigmoid_forward(Tensor& y, const Tensor& x, Stream s) { launch(y, nullptr, x, s); }
void log_sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& x, Stream s) { launch(dx, &dy, x, s); }

}  // namespace lctx::ops::cuda
