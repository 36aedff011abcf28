#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

template <class T>
__global__ void embedding_forward_kernel(T* __restrict__ out, const int32_t* __restrict__ ids,
                                         const T* __restrict__ w, int64_t n, int64_t vocab, int64_t d) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * d; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = ids[i / d];
    out[i] = (id >= 0 && id < vocab) ? w[id * d + i % d] : from_f32<T>(0.0f);
  }
}

template <class T>
__global__ void embedding_backward_kernel(float* __restrict__ dw, const int32_t* __restrict__ ids,
                                          const T* __restrict__ dout, int64_t n, int64_t vocab, int64_t d) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * d; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = ids[i / d];
    if (id >= 0 && id < vocab) atomicAdd(dw + id * d + i % d, to_f32(dout[i]));
  }
}

}  // namespace

void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& w, Stream s) {
  const int64_t n = ids.numel(), d = w.size(1);
  if (n * d == 0) return;
  set_device(out);
  LCTX_DISPATCH_CUDA_FLOAT(w.dtype(), "embedding_forward", [&] {
    embedding_forward_kernel<<<grid_size(n * d, 256), 256, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(out.raw()), ids.data<int32_t>(), static_cast<const scalar_t*>(w.raw()), n,
        w.size(0), d);
  });
  LCTX_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

void embedding_backward(Tensor& dw, const Tensor& ids, const Tensor& dout, GradMode mode, Stream s) {
  set_device(dw);
  if (mode == GradMode::overwrite) dw.zero(s);
  const int64_t n = ids.numel(), d = dw.size(1);
  if (n * d == 0) return;
  LCTX_DISPATCH_CUDA_FLOAT(dout.dtype(), "embedding_backward", [&] {
    embedding_backward_kernel<<<grid_size(n * d, 256), 256, 0, cuda_stream(s)>>>(
        dw.data<float>(), ids.data<int32_t>(), static_cast<const scalar_t*>(dout.raw()), n, dw.size(0), d);
  });
  LCTX_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
}

}  // namespace lctx::ops::cuda
