#include "core/cuda/launch.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"
#include "ops/blend.h"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // backward: a warp per row

__device__ __forceinline__ float gate_of(const float z) { return 1.0f / (1.0f + __expf(-z)); }

template <class T>
__global__ void forward_kernel(T* __restrict__ o, const T* __restrict__ a, const T* __restrict__ b,
                               const T* __restrict__ z, float ratio, int64_t n, int64_t E) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
    const float r = z ? gate_of(to_f32(z[k / E])) : ratio;
    o[k] = from_f32<T>((1.0f - r) * to_f32(a[k]) + r * to_f32(b[k]));
  }
}

template <class T>
__global__ void backward_kernel(T* __restrict__ da, T* __restrict__ db, T* __restrict__ dz, const T* __restrict__ d_o,
                                const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ z,
                                float ratio, int64_t rows, int64_t E) {
  const int lane = threadIdx.x & 31;
  for (int64_t i = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / 32; i < rows;
       i += int64_t(gridDim.x) * kRowsPerBlock) {
    const float r = z ? gate_of(to_f32(z[i])) : ratio;
    float dr = 0.0f;
    for (int64_t e = lane; e < E; e += 32) {
      const int64_t k = i * E + e;
      const float g = to_f32(d_o[k]);
      da[k] = from_f32<T>((1.0f - r) * g);
      db[k] = from_f32<T>(r * g);
      dr += g * (to_f32(b[k]) - to_f32(a[k]));
    }
    dr = warp_sum(dr);
    if (dz && lane == 0) dz[i] = from_f32<T>(dr * r * (1.0f - r));
  }
}

template <class T>
const T* logits_of(const BlendWeight& w) {
  return w.logits.defined() ? static_cast<const T*>(w.logits.raw()) : nullptr;
}

}  // namespace

void blend_forward(Tensor& o, const Tensor& a, const Tensor& b, const BlendWeight& w, Stream s) {
  const int64_t n = a.numel(), E = a.size(-1);
  if (n == 0) return;
  set_device(a);
  LCTX_DISPATCH_CUDA_FLOAT(a.dtype(), "blend_forward", [&] {
    forward_kernel<<<grid_size(n, kThreads), kThreads, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(o.raw()), static_cast<const scalar_t*>(a.raw()), static_cast<const scalar_t*>(b.raw()),
        logits_of<scalar_t>(w), static_cast<float>(w.ratio), n, E);
  });
  LCTX_CUDA_CHECK_LAUNCH("blend forward_kernel");
}

void blend_backward(BlendGrads& g, const Tensor& d_o, const Tensor& a, const Tensor& b, const BlendWeight& w,
                    Stream s) {
  const int64_t E = a.size(-1), rows = E == 0 ? 0 : a.numel() / E;
  if (rows == 0) return;
  set_device(a);
  LCTX_DISPATCH_CUDA_FLOAT(a.dtype(), "blend_backward", [&] {
    backward_kernel<<<grid_size(rows, kRowsPerBlock), kThreads, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(g.da.raw()), static_cast<scalar_t*>(g.db.raw()),
        g.dz.defined() ? static_cast<scalar_t*>(g.dz.raw()) : nullptr, static_cast<const scalar_t*>(d_o.raw()),
        static_cast<const scalar_t*>(a.raw()), static_cast<const scalar_t*>(b.raw()), logits_of<scalar_t>(w),
        static_cast<float>(w.ratio), rows, E);
  });
  LCTX_CUDA_CHECK_LAUNCH("blend backward_kernel");
}

}  // namespace lctx::ops::cuda
