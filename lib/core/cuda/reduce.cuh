// fp32 sums and maxima over a warp (butterfly shuffles: every lane gets the result) and over
// a block (through 32 floats of shared memory), for the row and reduction kernels of every
// area. Namespace lctx like the rest of core/cuda/; included only from .cu files.
#pragma once
#include <cuda_runtime.h>

#include <cmath>

namespace lctx {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call synchronizes the block.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// Suffix sum over the block: returns the sum of v over threads >= threadIdx.x and sets `total`
// to the sum over all (fixed order: deterministic). Same contract as block_sum.
__device__ __forceinline__ float block_suffix_sum(float v, float* scratch, float& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_down_sync(0xffffffffu, v, o);
    if (lane + o < 32) v += y;
  }
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;  // lane 0 holds its warp's total
  __syncthreads();
  float after = 0.0f, all = 0.0f;
  for (int j = 0; j < nwarps; ++j) {
    const float s = scratch[j];
    all += s;
    if (j > warp) after += s;
  }
  total = all;
  return v + after;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

}  // namespace lctx
