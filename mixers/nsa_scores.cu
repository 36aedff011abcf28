// NSA's selection scores on CUDA (nsa_scores.h): a thread block per (batch, KV head, query
// block) writes that block's row of scores. It walks the compressed rows in chunks of kChunk:
// for each of the block's rows and the group's heads (in that order) it stages the query in
// shared memory, and each warp takes the chunk's compressed rows c = c0 + warp (mod kWarps) the
// row sees, a lane per element of the dot product, adding p = exp(q . k scale - lse) into
// the chunk's sum for c (one warp per c: a fixed order, no atomics). The chunk's sums are then
// shared out, a thread per selection block j adding its overlapping rows in ascending c. Memory
// beyond the output: hd + kChunk floats of shared memory per block.
#include <cuda_runtime.h>

#include <cmath>

#include "core/cuda/launch.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"
#include "mixers/nsa_scores.h"

namespace lctx::mixers {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 1024;  // compressed rows whose sums a block holds in shared memory at a time

struct Dims {
  int64_t L, H, Hk, G, hd, Nc, T, bc, bs, blocks;
  float scale;
};

template <class T>
__global__ void scores_kernel(float* __restrict__ out, const T* __restrict__ q, const T* __restrict__ ck,
                              const float* __restrict__ lse, const int64_t* __restrict__ starts, Dims d) {
  extern __shared__ float smem[];
  float* qrow = smem;          // [hd]: the query row of the current (row, head), fp32
  float* part = smem + d.hd;   // [kChunk]: the chunk's probability sums, per compressed row
  const int64_t e = blockIdx.x;  // (b Hk + kh) T + t
  const int64_t t = e % d.T, kh = e / d.T % d.Hk, b = e / (d.T * d.Hk);
  const int64_t p0 = starts[t];                                 // the block's first position
  const int64_t last_seen = min(d.Nc, (p0 + d.bs) / d.bc);      // compressed rows its last row sees
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* row = out + e * d.blocks;
  for (int64_t j = threadIdx.x; j < d.blocks; j += blockDim.x) row[j] = 0.0f;
  for (int64_t c0 = 0; c0 < last_seen; c0 += kChunk) {
    const int64_t c1 = min(c0 + kChunk, last_seen);
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) part[c - c0] = 0.0f;
    for (int64_t r = 0; r < d.bs; ++r) {
      const int64_t l = t * d.bs + r, seen = min(c1, (p0 + r + 1) / d.bc);  // the same for the whole block
      if (seen <= c0) continue;
      for (int64_t h = kh * d.G; h < (kh + 1) * d.G; ++h) {
        __syncthreads();  // the previous query row is used up, and `part` zeroed
        const T* qr = q + ((b * d.L + l) * d.H + h) * d.hd;
        for (int64_t x = threadIdx.x; x < d.hd; x += blockDim.x) qrow[x] = to_f32(qr[x]);
        __syncthreads();
        const float m = lse[(b * d.H + h) * d.L + l];
        for (int64_t c = c0 + warp; c < seen; c += kWarps) {
          const T* k = ck + ((b * d.Nc + c) * d.Hk + kh) * d.hd;
          float dot = 0.0f;
          for (int64_t x = lane; x < d.hd; x += 32) dot += qrow[x] * to_f32(k[x]);
          dot = warp_sum(dot);
          if (lane == 0) part[c - c0] += expf(dot * d.scale - m);
        }
      }
    }
    __syncthreads();  // the chunk's sums are complete (and the row zeroed)
    // Selection blocks j0 .. j1 overlap the chunk's rows; each takes its rows c in ascending order.
    const int64_t j0 = c0 * d.bc / d.bs, j1 = (c1 * d.bc - 1) / d.bs;
    for (int64_t j = j0 + threadIdx.x; j <= j1; j += blockDim.x) {
      const int64_t lo = max(c0, j * d.bs / d.bc), hi = min(c1, ((j + 1) * d.bs - 1) / d.bc + 1);
      float acc = row[j];
      for (int64_t c = lo; c < hi; ++c) {
        const int64_t overlap = min((c + 1) * d.bc, (j + 1) * d.bs) - max(c * d.bc, j * d.bs);
        acc += part[c - c0] * (static_cast<float>(overlap) / static_cast<float>(d.bc));
      }
      row[j] = acc;
    }
    __syncthreads();  // `part` and the row are reused by the next chunk
  }
}

}  // namespace

void detail::nsa_selection_scores_cuda(const Tensor& out, const Tensor& q, const Tensor& ck, const Tensor& lse,
                                       const Tensor& starts, const NsaScoring& sc, Stream s) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), hd = q.size(3), Hk = ck.size(2);
  const Dims d{L,  H,  Hk, H / Hk, hd, ck.size(1), L / sc.select_block, sc.compress_block, sc.select_block, sc.blocks,
               sc.softmax_scale > 0 ? sc.softmax_scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)))};
  const int64_t grid = B * Hk * d.T;
  if (grid == 0) return;
  const size_t smem = static_cast<size_t>(hd + kChunk) * sizeof(float);
  set_device(q);
  LCTX_DISPATCH_CUDA_FLOAT(q.dtype(), "nsa_selection_scores", [&] {
    scores_kernel<scalar_t><<<static_cast<unsigned>(grid), kThreads, smem, cuda_stream(s)>>>(
        out.data<float>(), static_cast<const scalar_t*>(q.raw()), static_cast<const scalar_t*>(ck.raw()),
        lse.data<float>(), starts.data<int64_t>(), d);
  });
  LCTX_CUDA_CHECK_LAUNCH("nsa scores_kernel");
}

}  // namespace lctx::mixers
