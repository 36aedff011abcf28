// CUDA fused cross-entropy: a one-block kernel counts the non-ignored targets (so dlogits can
// be scaled by 1/n_valid in the same pass), one block per row computes an online max/sum of
// exp in one read of the logits and writes dlogits in a second, and a one-block kernel sums
// the row losses in a fixed order for the mean. No host synchronization.
#include "core/cuda/launch.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

constexpr int kThreads = 1024;

struct CeParams {
  int64_t n, v;
  int ignore_index;
  float loss_scale;
  const int32_t* targets;
  const int* valid;  // device count of non-ignored rows
  float* losses;
  float* mean;
};

__global__ void count_valid_kernel(int* valid, const int32_t* targets, int64_t n, int ignore_index) {
  __shared__ float scratch[32];
  float c = 0.0f;
  int total = 0;
  for (int64_t base = 0; base < n; base += int64_t(blockDim.x) * 4096) {  // fp32 counts stay exact per chunk
    c = 0.0f;
    for (int64_t i = base + threadIdx.x; i < min(n, base + int64_t(blockDim.x) * 4096); i += blockDim.x)
      c += targets[i] != ignore_index ? 1.0f : 0.0f;
    total += static_cast<int>(block_sum(c, scratch));
  }
  if (threadIdx.x == 0) *valid = total;
}

// Merge two (max, sum of exp(z - max)) pairs.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

template <class T>
__global__ void cross_entropy_kernel(T* dlogits, const T* logits, CeParams p) {
  __shared__ float sm[32], ss[32];
  const int64_t r = blockIdx.x;
  const T* z = logits + r * p.v;
  const int t = p.targets[r];
  const bool ignored = t == p.ignore_index;
  const bool bad = !ignored && (t < 0 || t >= p.v);
  // Read before any thread overwrites the row (dlogits may alias logits).
  const float zt = (threadIdx.x == 0 && !ignored && !bad) ? to_f32(z[t]) : 0.0f;
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = threadIdx.x; j < p.v; j += blockDim.x) {
    const float x = to_f32(z[j]);
    if (x > m) {
      s = s * expf(m - x) + 1.0f;
      m = x;
    } else if (m != -INFINITY) {
      s += expf(x - m);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < (blockDim.x >> 5) ? sm[lane] : -INFINITY;
    s = lane < (blockDim.x >> 5) ? ss[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      merge(m, s, m2, s2);
    }
    if (lane == 0) {
      sm[0] = m;
      ss[0] = s;
    }
  }
  __syncthreads();
  const float lse = sm[0] + logf(ss[0]);
  if (threadIdx.x == 0) p.losses[r] = ignored ? 0.0f : bad ? NAN : lse - zt;
  if (!dlogits) return;
  const int valid = *p.valid;
  const float scale = (ignored || bad || valid == 0) ? 0.0f : p.loss_scale / static_cast<float>(valid);
  T* d = dlogits + r * p.v;
  for (int64_t j = threadIdx.x; j < p.v; j += blockDim.x) {
    const float x = to_f32(z[j]);
    d[j] = from_f32<T>(scale * (expf(x - lse) - (j == t ? 1.0f : 0.0f)));
  }
}

__global__ void mean_loss_kernel(CeParams p) {
  __shared__ float scratch[32];
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) acc += p.losses[i];
  const float total = block_sum(acc, scratch);
  if (threadIdx.x == 0) *p.mean = *p.valid > 0 ? total / static_cast<float>(*p.valid) : 0.0f;
}

}  // namespace

void cross_entropy(Tensor& losses, Tensor& mean_loss, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                   const CrossEntropyOptions& opts, Stream s) {
  const int64_t n = logits.size(0), v = logits.size(1);
  if (n == 0) {
    mean_loss.zero(s);
    return;
  }
  set_device(logits);
  Tensor valid = Tensor::empty({1}, DType::i32, logits.device());  // freed into the stream-ordered cache
  const CeParams p{n, v, opts.ignore_index, opts.loss_scale, targets.data<int32_t>(), valid.data<int32_t>(),
                   losses.data<float>(), mean_loss.data<float>()};
  const cudaStream_t st = cuda_stream(s);
  count_valid_kernel<<<1, kThreads, 0, st>>>(valid.data<int32_t>(), p.targets, n, opts.ignore_index);
  LCTX_CUDA_CHECK_LAUNCH("count_valid_kernel");
  const int threads = row_threads(v, kThreads);
  LCTX_DISPATCH_CUDA_FLOAT(logits.dtype(), "cross_entropy", [&] {
    cross_entropy_kernel<scalar_t><<<static_cast<unsigned>(n), threads, 0, st>>>(
        dlogits.defined() ? static_cast<scalar_t*>(dlogits.raw()) : nullptr,
        static_cast<const scalar_t*>(logits.raw()), p);
  });
  LCTX_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
  mean_loss_kernel<<<1, kThreads, 0, st>>>(p);
  LCTX_CUDA_CHECK_LAUNCH("mean_loss_kernel");
}

}  // namespace lctx::ops::cuda
