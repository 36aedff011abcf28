// NSA's selection scores on CUDA (nsa_scores.h): a thread block per (batch, KV head, query
// block) writes that block's row of scores. It walks the compressed rows in chunks of kChunk,
// sums each row's probabilities p = exp(q . k scale - lse) over the block's rows and the
// group's heads in a fixed order (no atomics), then shares the chunk's sums out to the
// selection blocks, a thread per block j adding its overlapping rows in ascending c: the
// result is deterministic and the selection blocks that one compressed row alone covers tie
// exactly. Two forms of the sums, picked per call:
//   tensor cores (scores_mma_kernel; bf16/f16, head dims 64 and 128): per group head and tile of
//     64 rows, the scores against 64 compressed rows at a time by mma.sync from swizzled shared
//     tiles (8 warps: 4 row tiles x 2 halves of the 64 rows); each warp sums its probabilities
//     down its rows and the 4 row-tile warps' sums are added in order;
//   fp32 (scores_kernel; f32 or other head dims): per (row, head) the query in shared memory
//     and a warp per compressed row, a lane per element of the dot product.
// Shared memory: the chunk's sums (kChunk floats) and the query row (fp32) or the two tiles.
#include <cuda_runtime.h>

#include <cmath>

#include "core/cuda/launch.cuh"
#include "core/cuda/mma.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"
#include "mixers/nsa_scores.h"

namespace lctx::mixers {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 1024;  // compressed rows whose sums a block holds in shared memory at a time
constexpr int kMaxPicks = static_cast<int>(kNsaMaxPicksCuda);  // nsa_pick_blocks: picks in shared memory

struct Dims {
  int64_t L, H, Hk, G, hd, Nc, T, bc, bs, blocks;
  float scale;
};

// The sums part[c - c0] of compressed rows [c0, c1) added to the selection blocks j0 .. j1 they
// overlap, each block taking its rows c in ascending order.
__device__ void share_out(float* row, const float* part, int64_t c0, int64_t c1, const Dims& d) {
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
}

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
    share_out(row, part, c0, c1, d);
    __syncthreads();  // `part` and the row are reused by the next chunk
  }
}

// scores_kernel's sums on tensor cores (16-bit q and ck, head dim HD in {64, 128}).
template <class T, int HD>
__global__ void __launch_bounds__(kThreads) scores_mma_kernel(float* __restrict__ out, const T* __restrict__ q,
                                                              const T* __restrict__ ck, const float* __restrict__ lse,
                                                              const int64_t* __restrict__ starts, Dims d) {
  constexpr int R = 64;  // query rows and compressed rows per tile
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* const qs = reinterpret_cast<T*>(smem_raw);  // [R][HD] swizzled: rows of one head
  T* const ks = qs + R * HD;                     // [R][HD] swizzled: compressed rows
  float* const red = reinterpret_cast<float*>(ks + R * HD);  // [4][R]: the row-tile warps' column sums
  float* const part = red + 4 * R;                           // [kChunk]
  const int64_t e = blockIdx.x;  // (b Hk + kh) T + t
  const int64_t t = e % d.T, kh = e / d.T % d.Hk, b = e / (d.T * d.Hk);
  const int64_t p0 = starts[t];
  const int64_t last_seen = min(d.Nc, (p0 + d.bs) / d.bc);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, tq = lane % 4;
  const int m0 = 16 * (warp % 4), n0 = 32 * (warp / 4);
  const int64_t q_stride = d.H * d.hd, k_stride = d.Hk * d.hd;
  const T* const kbase = ck + (b * d.Nc * d.Hk + kh) * d.hd;
  float* row = out + e * d.blocks;
  for (int64_t j = tid; j < d.blocks; j += kThreads) row[j] = 0.0f;
  for (int64_t c0 = 0; c0 < last_seen; c0 += kChunk) {
    const int64_t c1 = min(c0 + kChunk, last_seen);
    for (int64_t c = c0 + tid; c < c1; c += kThreads) part[c - c0] = 0.0f;
    for (int64_t h = kh * d.G; h < (kh + 1) * d.G; ++h) {
      for (int64_t r0 = 0; r0 < d.bs; r0 += R) {
        const int64_t l0 = t * d.bs + r0, rows = min(static_cast<int64_t>(R), d.bs - r0);
        const int64_t seen_hi = min(c1, (p0 + r0 + rows) / d.bc);  // what the tile's last row sees
        if (seen_hi <= c0) continue;
        // This thread's two rows (g, g + 8 of its row tile): log-sum-exp and compressed rows seen.
        float m[2];
        int64_t seen[2];
        for (int hi = 0; hi < 2; ++hi) {
          const int i = m0 + g + 8 * hi;
          const bool ok = i < rows;
          m[hi] = ok ? lse[(b * d.H + h) * d.L + l0 + i] : 0.0f;
          seen[hi] = ok ? min(d.Nc, (p0 + r0 + i + 1) / d.bc) : 0;
        }
        __syncthreads();  // the previous tiles and `red` are used up, `part` zeroed
        load_tile<R, HD, kThreads>(qs, q + ((b * d.L + l0) * d.H + h) * d.hd, q_stride, 0, rows, tid);
        cp_async_commit();
        for (int64_t k0 = c0; k0 < seen_hi; k0 += R) {
          if (k0 > c0) __syncthreads();  // every warp is done with the last key tile and `red`
          load_tile<R, HD, kThreads>(ks, kbase, k_stride, k0, d.Nc, tid);
          cp_async_commit();
          cp_async_wait<0>();
          __syncthreads();
          float acc[1][4][4] = {};
          warp_tile_mma<T, HD / 16, HD, HD, BLayout::nk>(acc, ldsm_base<HD, kLanesRowsFirst>(qs, lane), 0, m0,
                                                         ldsm_base<HD, kLanesColsFirst>(ks, lane), 0, n0);
          // p for the visible (row, compressed row) pairs, summed down the warp's 16 rows.
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int lo = 0; lo < 2; ++lo) {
              const int64_t c = k0 + n0 + 8 * j + 2 * tq + lo;
              float sum = 0.0f;
#pragma unroll
              for (int hi = 0; hi < 2; ++hi)
                if (c < seen[hi]) sum += expf(acc[0][j][2 * hi + lo] * d.scale - m[hi]);
              sum += __shfl_xor_sync(0xffffffffu, sum, 4);
              sum += __shfl_xor_sync(0xffffffffu, sum, 8);
              sum += __shfl_xor_sync(0xffffffffu, sum, 16);
              if (g == 0) red[(warp % 4) * R + n0 + 8 * j + 2 * tq + lo] = sum;
            }
          __syncthreads();
          if (tid < R && k0 + tid < c1)
            part[k0 + tid - c0] += red[tid] + red[R + tid] + red[2 * R + tid] + red[3 * R + tid];
        }
      }
    }
    __syncthreads();  // the chunk's sums are complete (and the row zeroed)
    share_out(row, part, c0, c1, d);
    __syncthreads();  // `part` and the row are reused by the next chunk
  }
}

// nsa_pick_blocks on the device: a thread block per row. The picks after blocks 0 and qb come
// in the order (score descending, block ascending), so pick k + 1 is the best block after pick
// k in that order: a block-wide arg-max per pick, no marks. Then the picks sorted, -1 after.
__global__ void __launch_bounds__(kThreads) pick_kernel(int32_t* __restrict__ out, const float* __restrict__ scores,
                                                        const int64_t* __restrict__ own, int64_t blocks, int n) {
  __shared__ float best_s[kWarps];
  __shared__ int best_j[kWarps];
  __shared__ int picked[kMaxPicks];
  const int64_t r = blockIdx.x;
  const float* row = scores + r * blocks;
  const int qb = static_cast<int>(own[r]), lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int count = 1;
  if (threadIdx.x == 0) picked[0] = 0;
  if (qb > 0) {
    if (threadIdx.x == 0) picked[1] = qb;
    count = 2;
  }
  const int want = min(n, qb + 1);
  float last_s = INFINITY;
  int last_j = -1;
  for (; count < want; ++count) {
    float bs = -INFINITY;
    int bj = -1;
    for (int j = 1 + threadIdx.x; j < qb; j += kThreads) {  // after (last_s, last_j) in the order
      const float x = row[j];
      const bool after = x < last_s || (x == last_s && j > last_j);
      if (after && (bj < 0 || x > bs)) {  // ascending j: the first of equal scores stays
        bs = x;
        bj = j;
      }
    }
    for (int o = 16; o >= 1; o /= 2) {
      const float os = __shfl_xor_sync(0xffffffffu, bs, o);
      const int oj = __shfl_xor_sync(0xffffffffu, bj, o);
      if (oj >= 0 && (bj < 0 || os > bs || (os == bs && oj < bj))) {
        bs = os;
        bj = oj;
      }
    }
    if (lane == 0) {
      best_s[warp] = bs;
      best_j[warp] = bj;
    }
    __syncthreads();
    bs = best_s[0];
    bj = best_j[0];
    for (int w = 1; w < kWarps; ++w)
      if (best_j[w] >= 0 && (bj < 0 || best_s[w] > bs || (best_s[w] == bs && best_j[w] < bj))) {
        bs = best_s[w];
        bj = best_j[w];
      }
    __syncthreads();  // best_s / best_j are rewritten by the next pick
    if (threadIdx.x == 0) picked[count] = bj;
    last_s = bs;
    last_j = bj;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // at most kMaxPicks: insertion sort
    for (int i = 1; i < count; ++i)
      for (int k = i; k > 0 && picked[k - 1] > picked[k]; --k) {
        const int t = picked[k];
        picked[k] = picked[k - 1];
        picked[k - 1] = t;
      }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += kThreads) out[r * n + i] = i < count ? picked[i] : -1;
}

}  // namespace

void detail::nsa_selection_scores_cuda(const Tensor& out, const Tensor& q, const Tensor& ck, const Tensor& lse,
                                       const Tensor& starts, const NsaScoring& sc, Stream s) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), hd = q.size(3), Hk = ck.size(2);
  const Dims d{L,  H,  Hk, H / Hk, hd, ck.size(1), L / sc.select_block, sc.compress_block, sc.select_block, sc.blocks,
               sc.softmax_scale > 0 ? sc.softmax_scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)))};
  const int64_t grid = B * Hk * d.T;
  if (grid == 0) return;
  set_device(q);
  const bool mma = (q.dtype() == DType::bf16 || q.dtype() == DType::f16) && (hd == 64 || hd == 128);
  if (mma) {
    const size_t smem = 2 * 64 * static_cast<size_t>(hd) * 2 + (4 * 64 + kChunk) * sizeof(float);
    auto launch = [&](auto t, auto hd_c) {
      using T = decltype(t);
      constexpr int HD = decltype(hd_c)::value;
      LCTX_CUDA_CHECK(cudaFuncSetAttribute(scores_mma_kernel<T, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
      scores_mma_kernel<T, HD><<<static_cast<unsigned>(grid), kThreads, smem, cuda_stream(s)>>>(
          out.data<float>(), static_cast<const T*>(q.raw()), static_cast<const T*>(ck.raw()), lse.data<float>(),
          starts.data<int64_t>(), d);
    };
    using I64 = std::integral_constant<int, 64>;
    using I128 = std::integral_constant<int, 128>;
    if (q.dtype() == DType::bf16) hd == 64 ? launch(__nv_bfloat16{}, I64{}) : launch(__nv_bfloat16{}, I128{});
    else hd == 64 ? launch(__half{}, I64{}) : launch(__half{}, I128{});
    LCTX_CUDA_CHECK_LAUNCH("nsa scores_mma_kernel");
    return;
  }
  const size_t smem = static_cast<size_t>(hd + kChunk) * sizeof(float);
  LCTX_DISPATCH_CUDA_FLOAT(q.dtype(), "nsa_selection_scores", [&] {
    scores_kernel<scalar_t><<<static_cast<unsigned>(grid), kThreads, smem, cuda_stream(s)>>>(
        out.data<float>(), static_cast<const scalar_t*>(q.raw()), static_cast<const scalar_t*>(ck.raw()),
        lse.data<float>(), starts.data<int64_t>(), d);
  });
  LCTX_CUDA_CHECK_LAUNCH("nsa scores_kernel");
}

void detail::nsa_pick_blocks_cuda(const Tensor& out, const Tensor& scores, const Tensor& own, int64_t top_n, Stream s) {
  LCTX_CHECK(top_n <= kMaxPicks, "nsa_pick_blocks: top_n ", top_n, " above the CUDA kernel's ", kMaxPicks);
  const int64_t R = scores.size(0);
  if (R == 0) return;
  set_device(scores);
  pick_kernel<<<static_cast<unsigned>(R), kThreads, 0, cuda_stream(s)>>>(
      out.data<int32_t>(), scores.data<float>(), own.data<int64_t>(), scores.size(1), static_cast<int>(top_n));
  LCTX_CUDA_CHECK_LAUNCH("nsa pick_kernel");
}

}  // namespace lctx::mixers
