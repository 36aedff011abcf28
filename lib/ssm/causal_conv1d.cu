// Causal depthwise conv1d CUDA kernels (causal_conv1d.h): bf16/f16/f32 activations, fp32
// weights and math. The layout is channels last, so a thread per (b, t, c) element reads its W
// rows at stride C with neighbouring threads on neighbouring channels (coalesced; the W-fold
// reuse of each row stays in L1/L2). Backward: the gradient of the pre-activation (dy through
// the SiLU, recomputed) once into an fp32 buffer; dx and d_history gather it over the W taps;
// dweight and dbias are per-channel sums over (b, t): blocks of 32 channels x 8 warps sum a
// slice of the rows each into fp32 partials, which a second kernel adds in slice order (the
// result does not depend on scheduling).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/allocator.h"
#include "core/cuda/launch.cuh"
#include "core/cuda_check.h"
#include "core/cuda_types.cuh"
#include "ssm/causal_conv1d.h"
#include "ssm/causal_conv1d_params.h"
#include "ssm/ssm_math.h"

namespace lctx::ssm {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = 8;

// Row t of sequence b, channel c: x for t >= 0, the history (or zero) for t in [-(W-1), 0).
template <class T>
__device__ __forceinline__ float row(const ConvParams& p, int64_t b, int64_t t, int c) {
  if (t >= 0) return to_f32(static_cast<const T*>(p.x)[(b * p.seqlen + t) * p.channels + c]);
  if (!p.history) return 0.0f;
  return to_f32(static_cast<const T*>(p.history)[(b * (p.width - 1) + t + p.width - 1) * p.channels + c]);
}

template <class T>
__device__ __forceinline__ float pre_activation(const ConvParams& p, int64_t b, int64_t t, int c) {
  float s = p.bias ? static_cast<const float*>(p.bias)[c] : 0.0f;
  const float* w = static_cast<const float*>(p.weight) + static_cast<int64_t>(c) * p.width;
#pragma unroll
  for (int k = 0; k < kMaxConvWidth; ++k)
    if (k < p.width) s += w[k] * row<T>(p, b, t - (p.width - 1) + k, c);
  return s;
}

template <class T>
__global__ void conv_forward_kernel(const ConvParams p) {
  const int64_t n = p.batch * p.seqlen * p.channels;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % p.channels);
    const int64_t bt = i / p.channels, b = bt / p.seqlen, t = bt % p.seqlen;
    const float v = pre_activation<T>(p, b, t, c);
    static_cast<T*>(p.y)[i] = from_f32<T>(p.silu ? detail::silu(v) : v);
  }
}

// dpre = dy (times silu'(pre) when the SiLU is fused), fp32, [B, S, C].
template <class T>
__global__ void conv_dpre_kernel(const ConvParams p, float* dpre) {
  const int64_t n = p.batch * p.seqlen * p.channels;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = to_f32(static_cast<const T*>(p.dy)[i]);
    if (p.silu) {
      const int c = static_cast<int>(i % p.channels);
      const int64_t bt = i / p.channels;
      g *= detail::silu_grad(pre_activation<T>(p, bt / p.seqlen, bt % p.seqlen, c));
    }
    dpre[i] = g;
  }
}

// The gradient of rows r in [-(W-1), S) of each sequence: dx (r >= 0) or d_history (r < 0),
// sum_k weight[c, k] dpre[r + (W-1) - k].
template <class T>
__global__ void conv_dx_kernel(const ConvParams p, const float* dpre) {
  const int64_t rows = p.seqlen + p.width - 1, n = p.batch * rows * p.channels;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % p.channels);
    const int64_t br = i / p.channels, b = br / rows, r = br % rows - (p.width - 1);
    const float* w = static_cast<const float*>(p.weight) + static_cast<int64_t>(c) * p.width;
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxConvWidth; ++k) {
      const int64_t t = r + (p.width - 1) - k;
      if (k < p.width && t >= 0 && t < p.seqlen) s += w[k] * dpre[(b * p.seqlen + t) * p.channels + c];
    }
    if (r >= 0)
      static_cast<T*>(p.dx)[(b * p.seqlen + r) * p.channels + c] = from_f32<T>(s);
    else
      static_cast<T*>(p.d_history)[(b * (p.width - 1) + r + p.width - 1) * p.channels + c] = from_f32<T>(s);
  }
}

// Partial sums over a slice of the B*S rows: part[slice][c][k] = sum dpre * row(t - (W-1) + k)
// for k < W, part[slice][c][W] = sum dpre. Block: 32 channels (lanes) x kWarps warps.
template <class T>
__global__ void __launch_bounds__(kThreads) conv_dweight_kernel(const ConvParams p, const float* dpre, float* part,
                                                                 int64_t rows_per_slice) {
  __shared__ float s[kWarps][kMaxConvWidth + 1][32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int c = blockIdx.x * 32 + lane;
  const int64_t total = p.batch * p.seqlen, r0 = blockIdx.y * rows_per_slice;
  const int64_t r1 = std::min<int64_t>(total, r0 + rows_per_slice);
  float acc[kMaxConvWidth + 1] = {};
  if (c < p.channels) {
    for (int64_t r = r0 + w; r < r1; r += kWarps) {
      const int64_t b = r / p.seqlen, t = r % p.seqlen;
      const float g = dpre[r * p.channels + c];
#pragma unroll
      for (int k = 0; k < kMaxConvWidth; ++k)
        if (k < p.width) acc[k] += g * row<T>(p, b, t - (p.width - 1) + k, c);
      acc[kMaxConvWidth] += g;
    }
  }
#pragma unroll
  for (int k = 0; k <= kMaxConvWidth; ++k) s[w][k][lane] = acc[k];
  __syncthreads();
  if (w == 0 && c < p.channels) {
    float* out = part + (blockIdx.y * int64_t(p.channels) + c) * (kMaxConvWidth + 1);
    for (int k = 0; k <= kMaxConvWidth; ++k) {
      float v = 0.0f;
      for (int j = 0; j < kWarps; ++j) v += s[j][k][lane];
      out[k] = v;
    }
  }
}

// dweight[c][k], dbias[c]: the slices' partials added in slice order.
__global__ void conv_dweight_sum_kernel(const ConvParams p, const float* part, int slices) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < p.channels; c += gridDim.x * blockDim.x) {
    for (int k = 0; k <= p.width; ++k) {
      const int kk = k < p.width ? k : kMaxConvWidth;
      float v = 0.0f;
      for (int j = 0; j < slices; ++j) v += part[(static_cast<int64_t>(j) * p.channels + c) * (kMaxConvWidth + 1) + kk];
      if (k < p.width)
        static_cast<float*>(p.dweight)[static_cast<int64_t>(c) * p.width + k] = v;
      else if (p.dbias)
        static_cast<float*>(p.dbias)[c] = v;
    }
  }
}

int current_device() {
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

}  // namespace

void causal_conv1d_forward_cuda(const ConvParams& p, Stream s) {
  const int64_t n = p.batch * p.seqlen * p.channels;
  if (n == 0) return;
  LCTX_DISPATCH_CUDA_FLOAT(p.dtype, "causal_conv1d_forward", [&] {
    conv_forward_kernel<scalar_t><<<grid_size(n, kThreads), kThreads, 0, cuda_stream(s)>>>(p);
    LCTX_CUDA_CHECK_LAUNCH("causal_conv1d_forward");
  });
}

void causal_conv1d_backward_cuda(const ConvParams& p, Stream s) {
  const cudaStream_t st = cuda_stream(s);
  const Device dev = Device::cuda(current_device());
  const int64_t n = p.batch * p.seqlen * p.channels, rows = p.batch * p.seqlen;
  const int tiles = (p.channels + 31) / 32;
  // Enough row slices to fill the GPU twice over, each of at least kWarps rows.
  const int64_t slices = std::clamp<int64_t>(264 / std::max(tiles, 1), 1, std::max<int64_t>(rows / kWarps, 1));
  const int64_t per_slice = (rows + slices - 1) / slices;
  const int64_t floats = n + slices * p.channels * (kMaxConvWidth + 1);
  float* dpre = static_cast<float*>(allocate_async(std::max<int64_t>(floats, 1) * sizeof(float), dev, s));
  float* part = dpre + n;
  LCTX_DISPATCH_CUDA_FLOAT(p.dtype, "causal_conv1d_backward", [&] {
    if (n > 0) {
      conv_dpre_kernel<scalar_t><<<grid_size(n, kThreads), kThreads, 0, st>>>(p, dpre);
      LCTX_CUDA_CHECK_LAUNCH("causal_conv1d_backward (dpre)");
    }
    const int64_t ng = p.batch * (p.seqlen + p.width - 1) * p.channels;
    if (ng > 0) {
      conv_dx_kernel<scalar_t><<<grid_size(ng, kThreads), kThreads, 0, st>>>(p, dpre);
      LCTX_CUDA_CHECK_LAUNCH("causal_conv1d_backward (dx)");
    }
    if (p.channels > 0) {
      conv_dweight_kernel<scalar_t><<<dim3(tiles, static_cast<unsigned>(slices)), kThreads, 0, st>>>(p, dpre, part,
                                                                                                      per_slice);
      LCTX_CUDA_CHECK_LAUNCH("causal_conv1d_backward (dweight)");
      conv_dweight_sum_kernel<<<grid_size(p.channels, kThreads), kThreads, 0, st>>>(p, part,
                                                                                     static_cast<int>(slices));
      LCTX_CUDA_CHECK_LAUNCH("causal_conv1d_backward (dweight sum)");
    }
  });
  deallocate_async(dpre, dev, s);
}

}  // namespace lctx::ssm
