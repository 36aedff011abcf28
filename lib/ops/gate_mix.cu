#include "core/cuda/launch.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"
#include "ops/gate_mix.h"

namespace lctx::ops::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // backward: a warp per gate logit
constexpr int kPerLaunch = 8;                 // branches per kernel launch (pointers passed by value)

// Branches first .. first + count - 1 of the n (count <= kPerLaunch): their data pointers.
template <class P>
struct Chunk {
  P at[kPerLaunch];
  int first, count;
};

template <class P>
Chunk<P> chunk_of(std::span<const Tensor> ts, int first) {
  Chunk<P> c{};
  c.first = first;
  c.count = std::min<int>(kPerLaunch, static_cast<int>(ts.size()) - first);
  for (int t = 0; t < c.count; ++t) c.at[t] = static_cast<P>(ts[static_cast<size_t>(first + t)].raw());
  return c;
}

__device__ __forceinline__ float gate_of(const float z) { return 1.0f / (1.0f + expf(-z)); }

// A thread per element k = (i H + h) E + e: o[k] = sum over the chunk of g_t o_t[k] in fp32,
// added to o[k] after the first chunk.
template <class T>
__global__ void forward_kernel(T* __restrict__ o, Chunk<const T*> b, const T* __restrict__ z, int n, int64_t total,
                               int64_t H, int64_t E) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / (H * E), h = k / E % H;
    float acc = b.first > 0 ? to_f32(o[k]) : 0.0f;
    for (int t = 0; t < b.count; ++t) acc += gate_of(to_f32(z[(i * n + b.first + t) * H + h])) * to_f32(b.at[t][k]);
    o[k] = from_f32<T>(acc);
  }
}

// A warp per gate logit (i, t, h) of the chunk: d_t = g do over the row's E elements, and
// dz = g (1 - g) sum_e do o_t.
template <class T>
__global__ void backward_kernel(Chunk<T*> db, T* __restrict__ dz, const T* __restrict__ d_o, Chunk<const T*> b,
                                const T* __restrict__ z, int n, int64_t rows, int64_t H, int64_t E) {
  const int lane = threadIdx.x & 31;
  const int64_t logits = rows * b.count * H;
  for (int64_t q = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / 32; q < logits;
       q += int64_t(gridDim.x) * kRowsPerBlock) {
    const int64_t i = q / (b.count * H), h = q % H;
    const int t = static_cast<int>(q / H % b.count);
    const int64_t gi = (i * n + b.first + t) * H + h;
    const float g = gate_of(to_f32(z[gi]));
    const T* bt = b.at[t];
    T* dbt = db.at[t];
    float dg = 0.0f;
    for (int64_t e = lane; e < E; e += 32) {
      const int64_t k = (i * H + h) * E + e;
      const float d = to_f32(d_o[k]);
      dbt[k] = from_f32<T>(g * d);
      dg += d * to_f32(bt[k]);
    }
    dg = warp_sum(dg);
    if (lane == 0) dz[gi] = from_f32<T>(dg * g * (1.0f - g));
  }
}

}  // namespace

void gate_mix_forward(Tensor& o, std::span<const Tensor> branches, const Tensor& logits, Stream s) {
  const int64_t total = o.numel(), H = o.size(-2), E = o.size(-1);
  const int n = static_cast<int>(branches.size());
  if (total == 0) return;
  set_device(o);
  LCTX_DISPATCH_CUDA_FLOAT(o.dtype(), "gate_mix_forward", [&] {
    for (int first = 0; first < n; first += kPerLaunch) {
      forward_kernel<<<grid_size(total, kThreads), kThreads, 0, cuda_stream(s)>>>(
          static_cast<scalar_t*>(o.raw()), chunk_of<const scalar_t*>(branches, first),
          static_cast<const scalar_t*>(logits.raw()), n, total, H, E);
      LCTX_CUDA_CHECK_LAUNCH("gate_mix forward_kernel");
    }
  });
}

void gate_mix_backward(std::span<const Tensor> d_branches, Tensor& d_logits, const Tensor& d_o,
                       std::span<const Tensor> branches, const Tensor& logits, Stream s) {
  const int n = static_cast<int>(branches.size());
  const int64_t H = d_o.size(-2), E = d_o.size(-1), rows = logits.numel() / std::max<int64_t>(logits.size(-1), 1);
  if (rows * H == 0) return;
  set_device(d_o);
  LCTX_DISPATCH_CUDA_FLOAT(d_o.dtype(), "gate_mix_backward", [&] {
    for (int first = 0; first < n; first += kPerLaunch) {
      const Chunk<const scalar_t*> b = chunk_of<const scalar_t*>(branches, first);
      backward_kernel<<<grid_size(rows * b.count * H, kRowsPerBlock), kThreads, 0, cuda_stream(s)>>>(
          chunk_of<scalar_t*>(d_branches, first), static_cast<scalar_t*>(d_logits.raw()),
          static_cast<const scalar_t*>(d_o.raw()), b, static_cast<const scalar_t*>(logits.raw()), n, rows, H, E);
      LCTX_CUDA_CHECK_LAUNCH("gate_mix backward_kernel");
    }
  });
}

}  // namespace lctx::ops::cuda
