#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"
#include "ops/row_pool.h"

namespace lctx::ops::cuda {

namespace {

constexpr int kThreads = 256;

// A thread per (b, c, e): bucket c's rows added in order.
__global__ void forward_kernel(float* __restrict__ buckets, const float* __restrict__ rows,
                               const int32_t* __restrict__ offsets, const int32_t* __restrict__ members, float scale,
                               int64_t B, int64_t L, int64_t N, int64_t R) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < B * N * R;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = k % R, c = (k / R) % N, b = k / (R * N);
    float acc = buckets[k];
    for (int32_t j = offsets[c]; j < offsets[c + 1]; ++j) acc += scale * rows[(b * L + members[j]) * R + e];
    buckets[k] = acc;
  }
}

// A thread per (b, l, e).
__global__ void backward_kernel(float* __restrict__ rows, const float* __restrict__ buckets,
                                const int32_t* __restrict__ bucket, float scale, int64_t B, int64_t L, int64_t N,
                                int64_t R) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < B * L * R;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = k % R, l = (k / R) % L, b = k / (R * L);
    const int32_t c = bucket[l];
    if (c >= 0) rows[k] += scale * buckets[(b * N + c) * R + e];
  }
}

}  // namespace

void row_pool_forward(Tensor& buckets, const Tensor& rows, const RowBuckets& ix, double scale, Stream s) {
  const int64_t B = rows.size(0), L = rows.size(1), N = buckets.size(1), R = rows.size(2);
  if (B * N * R == 0) return;
  set_device(rows);
  forward_kernel<<<grid_size(B * N * R, kThreads), kThreads, 0, cuda_stream(s)>>>(
      buckets.data<float>(), rows.data<float>(), ix.offsets.data<int32_t>(), ix.members.data<int32_t>(),
      static_cast<float>(scale), B, L, N, R);
  LCTX_CUDA_CHECK_LAUNCH("row_pool forward_kernel");
}

void row_pool_backward(Tensor& rows, const Tensor& buckets, const RowBuckets& ix, double scale, Stream s) {
  const int64_t B = rows.size(0), L = rows.size(1), N = buckets.size(1), R = rows.size(2);
  if (B * L * R == 0) return;
  set_device(rows);
  backward_kernel<<<grid_size(B * L * R, kThreads), kThreads, 0, cuda_stream(s)>>>(
      rows.data<float>(), buckets.data<float>(), ix.bucket.data<int32_t>(), static_cast<float>(scale), B, L, N, R);
  LCTX_CUDA_CHECK_LAUNCH("row_pool backward_kernel");
}

}  // namespace lctx::ops::cuda
