#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

constexpr int kColsPerBlock = 32, kRowsPerBlock = 8;

struct ColReduceParams {
  ColReduce kind;
  int64_t rows, cols;
  const float* mean;
  const float* rstd;
  float* partial;  // [splits, cols]
};

template <class T>
__global__ void col_reduce_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x, ColReduceParams p) {
  __shared__ float tile[kRowsPerBlock][kColsPerBlock + 1];
  const int64_t c = int64_t(blockIdx.x) * kColsPerBlock + threadIdx.x;
  float acc = 0.0f;
  if (c < p.cols) {
    for (int64_t r = int64_t(blockIdx.y) * kRowsPerBlock + threadIdx.y; r < p.rows;
         r += int64_t(gridDim.y) * kRowsPerBlock) {
      const int64_t i = r * p.cols + c;
      float f = to_f32(dy[i]);
      if (p.kind == ColReduce::x_rstd) f *= to_f32(x[i]) * p.rstd[r];
      else if (p.kind == ColReduce::x_mean_rstd) f *= (to_f32(x[i]) - p.mean[r]) * p.rstd[r];
      acc += f;
    }
  }
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < p.cols) {
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < kRowsPerBlock; ++k) s += tile[k][threadIdx.x];
    p.partial[int64_t(blockIdx.y) * p.cols + c] = s;
  }
}

__global__ void col_reduce_final_kernel(float* __restrict__ out, const float* __restrict__ partial, int splits,
                                        int64_t cols, bool accumulate) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0.0f;
  for (int k = 0; k < splits; ++k) s += partial[int64_t(k) * cols + c];
  out[c] = accumulate ? out[c] + s : s;
}

}  // namespace

void col_reduce(Tensor& out, ColReduce kind, const Tensor& dy, const Tensor& x, const Tensor& mean,
                const Tensor& rstd, int64_t rows, int64_t cols, GradMode mode, Stream s) {
  if (cols == 0) return;
  set_device(dy);
  const int sms = sm_count(dy.device().index);
  const int64_t gx = (cols + kColsPerBlock - 1) / kColsPerBlock;
  const int64_t want = std::max<int64_t>(1, 4 * int64_t(sms) / gx);
  const int splits = static_cast<int>(
      std::clamp<int64_t>(std::min<int64_t>(want, (rows + kRowsPerBlock - 1) / kRowsPerBlock), 1, 1024));
  // Freed at return while the kernels may still run: safe because the caching allocator only
  // hands the block out again for work queued later on this stream (see core/allocator.h).
  Tensor partial = Tensor::empty({splits, cols}, DType::f32, dy.device());
  ColReduceParams p{kind,
                    rows,
                    cols,
                    mean.defined() ? mean.data<float>() : nullptr,
                    rstd.defined() ? rstd.data<float>() : nullptr,
                    partial.data<float>()};
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(splits));
  const dim3 block(kColsPerBlock, kRowsPerBlock);
  LCTX_DISPATCH_CUDA_FLOAT(dy.dtype(), "col_reduce", [&] {
    const scalar_t* xp = x.defined() ? static_cast<const scalar_t*>(x.raw()) : nullptr;
    col_reduce_partial_kernel<scalar_t><<<grid, block, 0, cuda_stream(s)>>>(
        static_cast<const scalar_t*>(dy.raw()), xp, p);
  });
  LCTX_CUDA_CHECK_LAUNCH("col_reduce_partial_kernel");
  col_reduce_final_kernel<<<grid_size(cols, 256), 256, 0, cuda_stream(s)>>>(
      out.data<float>(), partial.data<float>(), splits, cols, mode == GradMode::accumulate);
  LCTX_CUDA_CHECK_LAUNCH("col_reduce_final_kernel");
}

}  // namespace lctx::ops::cuda
