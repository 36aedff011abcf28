#include <vector>

#include "core/cuda/launch.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

constexpr int kThreads = 256, kMaxBlocks = 1024;

// Block b writes the fp32 sum of squares of its grid-stride share into partial[b].
template <class T>
__global__ void sum_squares_kernel(float* partial, const T* __restrict__ g, int64_t n) {
  __shared__ float scratch[32];
  float acc = 0.0f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = to_f32(g[i]);
    acc += x * x;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <class T>
__global__ void scale_kernel(T* g, float f, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    g[i] = from_f32<T>(to_f32(g[i]) * f);
}

// Blocks (partial sums) for n elements: 4 per thread, at most kMaxBlocks.
int blocks_for(int64_t n) { return grid_size(n, 4 * kThreads, kMaxBlocks); }

}  // namespace

double sum_squares(std::span<const Tensor> grads, Stream s) {
  set_device(grads[0]);
  int64_t total = 0;
  for (const Tensor& g : grads) total += blocks_for(g.numel());
  Tensor partial = Tensor::zeros({total}, DType::f32, grads[0].device(), s);
  int64_t off = 0;
  for (const Tensor& g : grads) {
    const int blocks = blocks_for(g.numel());
    if (g.numel() > 0) {
      LCTX_DISPATCH_CUDA_FLOAT(g.dtype(), "grad_norm", [&] {
        sum_squares_kernel<<<blocks, kThreads, 0, cuda_stream(s)>>>(partial.data<float>() + off,
                                                                      static_cast<const scalar_t*>(g.raw()), g.numel());
      });
      LCTX_CUDA_CHECK_LAUNCH("sum_squares_kernel");
    }
    off += blocks;
  }
  std::vector<float> host(static_cast<size_t>(total));
  LCTX_CUDA_CHECK(cudaMemcpyAsync(host.data(), partial.raw(), host.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                  cuda_stream(s)));
  LCTX_CUDA_CHECK(cudaStreamSynchronize(cuda_stream(s)));
  double sum = 0;
  for (float p : host) sum += p;
  return sum;
}

void scale(const Tensor& t, double scale, Stream s) {
  const int64_t n = t.numel();
  if (n == 0) return;
  set_device(t);
  LCTX_DISPATCH_CUDA_FLOAT(t.dtype(), "clip_grad_norm", [&] {
    scale_kernel<<<grid_size(n, kThreads), kThreads, 0, cuda_stream(s)>>>(static_cast<scalar_t*>(t.raw()),
                                                                         static_cast<float>(scale), n);
  });
  LCTX_CUDA_CHECK_LAUNCH("scale_kernel");
}

}  // namespace lctx::ops::cuda
