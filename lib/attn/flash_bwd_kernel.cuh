// Flash attention backward kernels (FlashAttention-2):
//  * flash_bwd_dot_kernel: Dsum = rowsum(dO * O) per query row (O as given, possibly the
//    global merged output) and lse2 = lse * log2e (+inf for fully masked rows, so that
//    exp2(s - lse2) is 0 and never exp(s - (-inf))), per (batch, head) padded to whole
//    query tiles (Dsum 0, lse2 +inf) so that the main kernel copies them with cp.async.
//  * flash_bwd_kernel: one block per (128-key tile, KV head, batch). It walks every query
//    head of the KV group and every query tile that can see its keys (block skipping by
//    position and by document; or the query tiles a block mask lists for it, masking only
//    the partial ones), recomputes P from lse2, and keeps dK/dV in registers (deterministic, summed over the
//    group). P and dS go to shared memory with stmatrix (sm_90; per-thread stores before). dQ = dS K is added with fp32 16-byte atomics into a scratch laid out in mma
//    fragment order per (batch, head, query tile) (FlashBwdTraits::kDqFrags). Two block
//    barriers per query tile: one before S/dP (the next tile's copy is issued right after it)
//    and one between writing P/dS to shared memory and reading them transposed.
//  * flash_bwd_dq_kernel: scratch * scale -> dq (overwrite or accumulate, any grad dtype).
#pragma once
#include <math_constants.h>

#include "attn/flash_docs.cuh"
#include "attn/flash_mask.cuh"
#include "attn/flash_params.h"
#include "attn/flash_traits.cuh"
#include "core/cuda/fast_math.cuh"
#include "core/cuda/mma.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"

namespace lctx::attn {

// Writes or adds a gradient value pair into a tensor of dtype p.grad_dtype (f32 or T).
template <class T>
__device__ __forceinline__ void store_grad2(void* base, int64_t idx, float x, float y, const FlashParams& p) {
  if (p.grad_dtype == DType::f32) {
    float* d = static_cast<float*>(base) + idx;
    if (p.accumulate) {
      x += d[0];
      y += d[1];
    }
    d[0] = x;
    d[1] = y;
  } else {
    T* d = static_cast<T*>(base) + idx;
    if (reinterpret_cast<uintptr_t>(d) % 4 == 0) {  // one 4-byte store (always, for even strides)
      *reinterpret_cast<uint32_t*>(d) = pack2<T>(x, y);
    } else {
      d[0] = from_f32<T>(x);
      d[1] = from_f32<T>(y);
    }
  }
}

template <class T, class TO>
__global__ void flash_bwd_dot_kernel(const FlashParams p, float* dsum, float* lse2, int64_t q_pad) {
  const int64_t rows = p.batch * p.heads_q * q_pad;
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int64_t b = r / (p.heads_q * q_pad), h = r / q_pad % p.heads_q, i = r % q_pad;
  if (i >= p.seqlen_q) {
    if (lane == 0) {
      dsum[r] = 0.f;
      lse2[r] = CUDART_INF_F;
    }
    return;
  }
  const TO* o = static_cast<const TO*>(p.o) + b * p.o_stride[0] + i * p.o_stride[1] + h * p.o_stride[2];
  const T* d = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + i * p.dout_stride[1] + h * p.dout_stride[2];
  float acc = 0.f;
  for (int c = lane; c < p.head_dim; c += 32) acc += to_f32(o[c]) * to_f32(d[c]);
  acc = warp_sum(acc);
  if (lane == 0) {
    dsum[r] = acc;  // r = (b * Hq + h) * q_pad + i
    const float l = static_cast<const float*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i];
    lse2[r] = l == -CUDART_INF_F ? CUDART_INF_F : l * kLog2e;
  }
}

// kAlibi: p.alibi_slopes is set (a template flag for the reason given at flash_fwd_kernel).
template <class Tr, class T, bool kAlibi>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    flash_bwd_kernel(const FlashParams p, float scale_log2, const float* dsum_g, const float* lse2_g, float* dq_acc) {
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN, MQ = Tr::kQueryTiles;
  constexpr int DH = D / 2;  // head-dim half a warp owns in dK/dV
  constexpr int DQ = D / 4;  // head dims a warp owns in dQ
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BN * D;
  T* sQ = sV + BN * D;        // [2][BM][D]
  T* sdO = sQ + 2 * BM * D;   // [2][BM][D]
  T* sP = sdO + 2 * BM * D;   // [BM][BN]
  T* sdS = sP + BM * BN;      // [BM][BN]
  float* sLse = reinterpret_cast<float*>(sdS + BM * BN);  // [2][BM]
  float* sDsum = sLse + 2 * BM;                          // [2][BM]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wq = (warp / 4) * (BM / 2);  // queries of this warp in S/dP and dQ (MQ m16 tiles)
  const int wk = (warp % 4) * 32;  // keys of this warp in S/dP and dK/dV (two 16-row tiles)
  const int wd = warp / 4;         // head-dim half in dK/dV
  const int wdq = (warp % 4) * DQ; // head dims in dQ
  const int G = p.group();
  const int hk = blockIdx.y;
  const int64_t b = blockIdx.z, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[2];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[2];
  const int64_t q_tiles = (p.seqlen_q + BM - 1) / BM;
  const uint32_t g_qA = ldsm_base<D, kLanesRowsFirst>(sQ, lane);  // also B of [k][n] Q, dO
  const uint32_t g_doA = ldsm_base<D, kLanesRowsFirst>(sdO, lane);
  const uint32_t g_kB = ldsm_base<D, kLanesColsFirst>(sK, lane), g_kBt = ldsm_base<D, kLanesRowsFirst>(sK, lane);
  const uint32_t g_vB = ldsm_base<D, kLanesColsFirst>(sV, lane);
  const uint32_t g_pAt = ldsm_base<BN, kLanesColsFirst>(sP, lane);
  const uint32_t g_dsAt = ldsm_base<BN, kLanesColsFirst>(sdS, lane), g_dsA = ldsm_base<BN, kLanesRowsFirst>(sdS, lane);

  int64_t qlo, qhi;
  flash_query_range(p, n0, min(n0 + BN, p.seqlen_k), &qlo, &qhi);
  int64_t full_lo = 0, full_hi = p.has_docs() ? 0 : p.seqlen_q;  // queries needing no document mask
  if (p.doc_ranges) {
    int64_t dlo, dhi;
    doc_rows(p, b, n0 / kDocTile, (min(n0 + BN, p.seqlen_k) + kDocTile - 1) / kDocTile, &dlo, &dhi, &full_lo, &full_hi);
    qlo = max(qlo, dlo);
    qhi = min(qhi, dhi);
  }
  // A block mask lists this block's query tiles instead: p.sparse_entries[list0 + i] is
  // tile << 1 | partial (the list is read through the params: no pointer kept in registers).
  const bool listed = p.sparse_entries != nullptr;
  const int32_t list0 = listed ? p.sparse_offsets[blockIdx.x] : 0;
  const int64_t m_begin = qlo / BM;
  const int64_t m_tiles = listed ? int64_t(p.sparse_offsets[blockIdx.x + 1] - list0)
                                 : qhi > qlo ? (qhi + BM - 1) / BM - m_begin : 0;
  auto query_tile = [&](int64_t it) -> int64_t {
    return listed ? int64_t(p.sparse_entries[list0 + it % m_tiles] >> 1) : m_begin + it % m_tiles;
  };
  const int64_t iters = m_tiles * G;
  // Q, dO, lse2 and Dsum of iteration it into buffer buf; lse2 and Dsum are padded to whole
  // tiles, so all four are plain 16-byte copies.
  auto prefetch = [&](int64_t it, int buf) {
    const int h = hk * G + static_cast<int>(it / m_tiles);
    const int64_t m0 = query_tile(it) * BM;
    const T* qg = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
    const T* dog = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[2];
    load_tile<BM, D, Tr::kThreads>(sQ + buf * BM * D, qg, p.q_stride[1], m0, p.seqlen_q, tid);
    load_tile<BM, D, Tr::kThreads>(sdO + buf * BM * D, dog, p.dout_stride[1], m0, p.seqlen_q, tid);
    const int64_t r0 = (b * p.heads_q + h) * (q_tiles * BM) + m0;
    if (tid < BM / 4) cp_async16(sLse + buf * BM + 4 * tid, lse2_g + r0 + 4 * tid, true);
    else if (tid < BM / 2) cp_async16(sDsum + buf * BM + 4 * (tid - BM / 4), dsum_g + r0 + 4 * (tid - BM / 4), true);
  };

  load_tile<BN, D, Tr::kThreads>(sK, kg, p.k_stride[1], n0, p.seqlen_k, tid);
  load_tile<BN, D, Tr::kThreads>(sV, vg, p.v_stride[1], n0, p.seqlen_k, tid);
  if (iters > 0) prefetch(0, 0);
  cp_async_commit();

  float dk[2][DH / 8][4], dv[2][DH / 8][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < DH / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[mt][j][e] = dv[mt][j][e] = 0.f;

  for (int64_t it = 0; it < iters; ++it) {
    const int buf = static_cast<int>(it & 1);
    cp_async_wait<0>();
    __syncthreads();  // tile `it` landed; everyone is done with the last tile's buffers and P/dS
    if (it + 1 < iters) {
      prefetch(it + 1, buf ^ 1);
      cp_async_commit();
    }
    const int h = hk * G + static_cast<int>(it / m_tiles);
    const int32_t entry = listed ? p.sparse_entries[list0 + it % m_tiles] : 0;  // tile << 1 | partial
    const int64_t mtile = listed ? int64_t(entry >> 1) : m_begin + it % m_tiles, m0 = mtile * BM;
    const uint32_t boff = buf * BM * D * sizeof(T);  // Q/dO buffer
    const uint32_t qA = opaque(g_qA), doA = opaque(g_doA), kB = opaque(g_kB), kBt = opaque(g_kBt), vB = opaque(g_vB);
    const uint32_t pAt = opaque(g_pAt), dsAt = opaque(g_dsAt), dsA = opaque(g_dsA);
    const uint32_t pA = dsA - BM * BN * sizeof(T);  // sP sits right before sdS

    // S = Q K^T, then P = exp2(S - lse2) to shared memory, then dP = dO V^T and
    // dS = P (dP - Dsum): this warp's 32 queries x 32 keys. S and dP are computed one after
    // the other so that only one of their operand sets is live next to dK/dV.
    // With ALiBi, a tile whose keys all precede its queries starts S from the bias in raw-score
    // units (flash_mask.cuh: alibi_scores) and then runs as a plain unmasked tile.
    auto tile_masked = [&] {
      return listed ? (entry & 1) != 0
                    : !flash_tile_in_band(p, m0, m0 + BM, n0, n0 + BN) || m0 < full_lo || m0 + BM > full_hi;
    };
    bool alibi_init = false;
    if constexpr (kAlibi) alibi_init = !tile_masked() && scale_log2 > 0.f && p.k_offset + n0 + BN <= p.q_offset + m0 + 1;
    float s[MQ][4][4];
    if (alibi_init) {
      const float slope_raw = p.alibi_slopes[h] * kLog2e / scale_log2;
      const int64_t key_minus_row = (p.k_offset + n0 + wk + 2 * (lane % 4)) - (p.q_offset + m0 + wq + lane / 4);
      alibi_scores<MQ, 4>(s, slope_raw, slope_raw * static_cast<float>(key_minus_row));
    } else {
#pragma unroll
      for (int mt = 0; mt < MQ; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][j][e] = 0.f;
    }
    warp_tile_mma<T, D / 16, D, D, BLayout::nk>(s, qA, boff, wq, kB, 0, wk);
    float mult = scale_log2;
    const bool masked = tile_masked();
    if (masked || (kAlibi && !alibi_init)) {
#pragma unroll
      for (int mt = 0; mt < MQ; ++mt) {
        const MaskRows m = mask_rows(p, b, h, m0 + wq + 16 * mt + lane / 4);
        if (masked) apply_mask<4>(s[mt], p, b, m, n0 + wk + 2 * (lane % 4), scale_log2);
        else apply_bias<4>(s[mt], p, m, n0 + wk + 2 * (lane % 4), scale_log2);
      }
      mult = 1.f;
    }
#pragma unroll
    for (int mt = 0; mt < MQ; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float l2 = sLse[buf * BM + wq + 16 * mt + lane / 4 + 8 * r];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          s[mt][j][2 * r] = fast_exp2(fmaf(s[mt][j][2 * r], mult, -l2));
          s[mt][j][2 * r + 1] = fast_exp2(fmaf(s[mt][j][2 * r + 1], mult, -l2));
        }
      }
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) stsm_c16<T, BN>(pA, sP, lane, wq + 16 * mt, wk + 16 * nj, s[mt][2 * nj], s[mt][2 * nj + 1]);
    }
    float dp[MQ][4][4];
#pragma unroll
    for (int mt = 0; mt < MQ; ++mt)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[mt][j][e] = 0.f;
    warp_tile_mma<T, D / 16, D, D, BLayout::nk>(dp, doA, boff, wq, vB, 0, wk);
#pragma unroll
    for (int mt = 0; mt < MQ; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float ds = sDsum[buf * BM + wq + 16 * mt + lane / 4 + 8 * r];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          dp[mt][j][2 * r] = s[mt][j][2 * r] * (dp[mt][j][2 * r] - ds);
          dp[mt][j][2 * r + 1] = s[mt][j][2 * r + 1] * (dp[mt][j][2 * r + 1] - ds);
        }
      }
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) stsm_c16<T, BN>(dsA, sdS, lane, wq + 16 * mt, wk + 16 * nj, dp[mt][2 * nj], dp[mt][2 * nj + 1]);
    }
    __syncthreads();

    // dV += P^T dO, dK += dS^T Q: this warp's 32 keys x DH head dims.
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      uint32_t ap[2][4], ads[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        ldsm_x4_trans(ap[mt], ldsm_at<BN>(pAt, kk * 16, wk + 16 * mt));
        ldsm_x4_trans(ads[mt], ldsm_at<BN>(dsAt, kk * 16, wk + 16 * mt));
      }
#pragma unroll
      for (int dj = 0; dj < DH / 16; ++dj) {
        uint32_t bdo[4], bq[4];
        ldsm_x4_trans(bdo, ldsm_at<D>(doA, kk * 16, wd * DH + dj * 16) + boff);
        ldsm_x4_trans(bq, ldsm_at<D>(qA, kk * 16, wd * DH + dj * 16) + boff);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816<T>(dv[mt][2 * dj], ap[mt], bdo[0], bdo[1]);
          mma16816<T>(dv[mt][2 * dj + 1], ap[mt], bdo[2], bdo[3]);
          mma16816<T>(dk[mt][2 * dj], ads[mt], bq[0], bq[1]);
          mma16816<T>(dk[mt][2 * dj + 1], ads[mt], bq[2], bq[3]);
        }
      }
    }
    // dQ += dS K: this warp's 32 queries x DQ head dims, added to the fp32 scratch.
    {
      float dq[MQ][DQ / 8][4];
#pragma unroll
      for (int mt = 0; mt < MQ; ++mt)
#pragma unroll
        for (int j = 0; j < DQ / 8; ++j) dq[mt][j][0] = dq[mt][j][1] = dq[mt][j][2] = dq[mt][j][3] = 0.f;
      warp_tile_mma<T, BN / 16, BN, D, BLayout::kn>(dq, dsA, 0, wq, kBt, 0, wdq);
      float* dst = dq_acc + ((b * p.heads_q + h) * q_tiles + mtile) * (BM * D) +
                   (warp * Tr::kDqFrags * 32 + lane) * 4;
#pragma unroll
      for (int mt = 0; mt < MQ; ++mt)
#pragma unroll
        for (int j = 0; j < DQ / 8; ++j) {
          float* d = dst + (mt * (DQ / 8) + j) * 128;
#if __CUDA_ARCH__ >= 900
          atomicAdd(reinterpret_cast<float4*>(d), make_float4(dq[mt][j][0], dq[mt][j][1], dq[mt][j][2], dq[mt][j][3]));
#else
#pragma unroll
          for (int e = 0; e < 4; ++e) atomicAdd(d + e, dq[mt][j][e]);
#endif
        }
    }
  }

  if (p.tile_counter && tid == 0) atomicAdd(p.tile_counter, static_cast<unsigned long long>(iters));
  // dK (times the softmax scale) and dV for this warp's 32 keys.
  const float scale = scale_log2 / kLog2e;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t key = n0 + wk + 16 * mt + lane / 4 + 8 * r;
      if (key >= p.seqlen_k) continue;
#pragma unroll
      for (int j = 0; j < DH / 8; ++j) {
        const int col = wd * DH + j * 8 + 2 * (lane % 4);
        store_grad2<T>(p.dk, b * p.dk_stride[0] + key * p.dk_stride[1] + hk * p.dk_stride[2] + col,
                       dk[mt][j][2 * r] * scale, dk[mt][j][2 * r + 1] * scale, p);
        store_grad2<T>(p.dv, b * p.dv_stride[0] + key * p.dv_stride[1] + hk * p.dv_stride[2] + col, dv[mt][j][2 * r],
                       dv[mt][j][2 * r + 1], p);
      }
    }
}

// dq_acc (fragment order, see FlashBwdTraits::kDqFrags) * scale -> dq: one thread per float4
// fragment (rows g and g + 8 of an m16 tile, two adjacent head dims each).
template <class Tr, class T>
__global__ void flash_bwd_dq_kernel(const FlashParams p, const float* dq_acc, float scale) {
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, DQ = D / 4, NJ = DQ / 8;
  const int64_t q_tiles = (p.seqlen_q + BM - 1) / BM;
  const int64_t n4 = p.batch * p.heads_q * q_tiles * (BM * D / 4);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n4;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(e % 32);
    const int frag = static_cast<int>(e / 32 % Tr::kDqFrags);
    const int warp = static_cast<int>(e / (32 * Tr::kDqFrags) % Tr::kWarps);
    const int64_t tile = e / (BM * D / 4);  // (b * Hq + h) * q_tiles + mtile
    const int64_t mtile = tile % q_tiles, h = tile / q_tiles % p.heads_q, b = tile / (q_tiles * p.heads_q);
    const int mt = frag / NJ, j = frag % NJ;
    const int64_t row = mtile * BM + (warp / 4) * (BM / 2) + 16 * mt + lane / 4;
    const int col = (warp % 4) * DQ + j * 8 + 2 * (lane % 4);
    const float4 v = reinterpret_cast<const float4*>(dq_acc)[e];
    const int64_t base = b * p.dq_stride[0] + h * p.dq_stride[2] + col;
    if (row < p.seqlen_q) store_grad2<T>(p.dq, base + row * p.dq_stride[1], v.x * scale, v.y * scale, p);
    if (row + 8 < p.seqlen_q) store_grad2<T>(p.dq, base + (row + 8) * p.dq_stride[1], v.z * scale, v.w * scale, p);
  }
}

}  // namespace lctx::attn
