// Flash attention forward kernel (FlashAttention-2): one block per (kBlockM-query tile,
// head, batch), warps of 32 query rows (FlashFwdTraits); each warp keeps its O accumulator,
// running max and sum in registers and streams K/V tiles, double buffered with cp.async
// (one barrier per tile: the next tile's copy is issued right after it and overlaps this
// tile's math), through mma.sync. P goes from the score registers straight into the A
// fragments of P V. Scores live in the log2 domain (scale * log2e folded into one FMA before
// ex2); the running max is raised lazily, so most tiles skip rescaling O. Key tiles that no
// query of the block can see (position rules, documents) are skipped; only tiles on the
// diagonal, window edges, document edges and ragged ends run the per-element mask, and ALiBi
// alone adds its bias without mask tests (before the diagonal: as Q K^T's initial value). With
// a block mask the block walks the mask's list of key tiles (FlashParams::sparse_entries) and
// masks only its partial ones.
#pragma once
#include <math_constants.h>

#include "attn/flash_docs.cuh"
#include "attn/flash_mask.cuh"
#include "attn/flash_params.h"
#include "attn/flash_traits.cuh"
#include "core/cuda/fast_math.cuh"
#include "core/cuda/mma.cuh"

namespace lctx::attn {

// kAlibi: p.alibi_slopes is set. A template flag (as in FlashAttention-2), not a runtime one:
// the ALiBi branch in the tile loop cost the plain kernel ~5% through register allocation.
template <class Tr, class T, bool kAlibi>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) flash_fwd_kernel(const FlashParams p, float scale_log2) {
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN, NT = BN / 8, DT = D / 8, MT = 2;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * D;      // [2][BN][D]
  T* sV = sK + 2 * BN * D;  // [2][BN][D]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int m_block = p.causal || p.sparse.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;  // heavy causal tiles first
  const int h = blockIdx.y, hk = h / p.group();
  const int64_t b = blockIdx.z, m0 = static_cast<int64_t>(m_block) * BM;
  const int64_t m_end = min(m0 + BM, p.seqlen_q);
  const int wr = warp * Tr::kWarpRows;
  const T* qg = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[2];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[2];
  const uint32_t g_q_base = ldsm_base<D, kLanesRowsFirst>(sQ, lane);
  const uint32_t g_k_base = ldsm_base<D, kLanesColsFirst>(sK, lane);
  const uint32_t g_v_base = ldsm_base<D, kLanesRowsFirst>(sV, lane);

  int64_t klo, khi;
  flash_key_range(p, m0, m_end, &klo, &khi);
  int64_t ulo, uhi;  // key tiles that need no per-element mask
  flash_band_tiles(p, m0, m0 + BM, BN, &ulo, &uhi);
  if (p.doc_ranges) {  // only keys in the one document of all the block's rows go unmasked
    int64_t dlo, dhi, flo, fhi;
    doc_rows(p, b, m0 / kDocTile, (m_end + kDocTile - 1) / kDocTile, &dlo, &dhi, &flo, &fhi);
    klo = max(klo, dlo);
    khi = min(khi, dhi);
    ulo = max(ulo, (flo + BN - 1) / BN);
    uhi = min(uhi, fhi / BN);
  } else if (p.has_docs()) {
    uhi = ulo;
  }
  const int64_t n_begin = klo / BN, n_end = khi > klo ? (khi + BN - 1) / BN : n_begin;
  const bool raw_max = scale_log2 > 0.f && !kAlibi;  // raw-score max needs a positive scale
  int n_tiles = static_cast<int>(n_end - n_begin);
  const int u_lo = static_cast<int>(max(ulo - n_begin, int64_t(0))),
            u_hi = static_cast<int>(max(min(uhi, n_end) - n_begin, int64_t(0)));
  // A block mask lists this block's key tiles instead: p.sparse_entries[list0 + t] is
  // tile << 1 | partial (read through the params: no pointer kept in registers).
  const bool listed = p.sparse_entries != nullptr;
  const int32_t list0 = listed ? p.sparse_offsets[m_block] : 0;
  if (listed) n_tiles = p.sparse_offsets[m_block + 1] - list0;
  // With ALiBi the tiles are walked from the last one back: the bias grows towards the
  // diagonal, so in ascending order the running max of the steep heads would rise, and O be
  // rescaled, on nearly every tile.
  auto tile_at = [&](int t) { return kAlibi ? n_tiles - 1 - t : t; };
  auto key_tile = [&](int t) -> int64_t {
    t = tile_at(t);
    return listed ? int64_t(p.sparse_entries[list0 + t] >> 1) : n_begin + t;
  };
  auto tile_masked = [&](int t) {
    t = tile_at(t);
    return listed ? (p.sparse_entries[list0 + t] & 1) != 0 : t < u_lo || t >= u_hi;
  };

  load_tile<BM, D, Tr::kThreads>(sQ, qg + m0 * p.q_stride[1], p.q_stride[1], 0, p.seqlen_q - m0, tid);
  if (n_tiles > 0) {
    load_tile<BN, D, Tr::kThreads>(sK, kg, p.k_stride[1], key_tile(0) * BN, p.seqlen_k, tid);
    load_tile<BN, D, Tr::kThreads>(sV, vg, p.v_stride[1], key_tile(0) * BN, p.seqlen_k, tid);
  }
  cp_async_commit();

  float o[MT][DT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < DT; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
  // Row r of m-tile mt: this thread's query row m0 + wr + 16 mt + lane / 4 + 8 r.
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) row_max[mt][r] = -CUDART_INF_F, row_sum[mt][r] = 0.f;

  for (int t = 0; t < n_tiles; ++t) {
    const int64_t n = key_tile(t);
    const int buf = t & 1;
    cp_async_wait<0>();
    __syncthreads();  // tile n landed for all; everyone is done with tile n - 1's buffer
    if (t + 1 < n_tiles) {
      const int64_t next = key_tile(t + 1) * BN;
      load_tile<BN, D, Tr::kThreads>(sK + (buf ^ 1) * BN * D, kg, p.k_stride[1], next, p.seqlen_k, tid);
      load_tile<BN, D, Tr::kThreads>(sV + (buf ^ 1) * BN * D, vg, p.v_stride[1], next, p.seqlen_k, tid);
      cp_async_commit();
    }
    const uint32_t boff = buf * BN * D * sizeof(T);  // K/V buffer
    const uint32_t q_base = opaque(g_q_base), k_base = opaque(g_k_base), v_base = opaque(g_v_base);

    // S = Q K^T for this warp's 32 rows x BN keys. With ALiBi, a tile whose keys all precede
    // the block's queries starts from the bias in raw-score units (positive scale) and then
    // runs as a plain unmasked tile.
    const int64_t n0 = n * BN;
    const bool masked = tile_masked(t);
    const bool alibi_init = kAlibi && !masked && scale_log2 > 0.f && p.k_offset + n0 + BN <= p.q_offset + m0 + 1;
    float s[MT][NT][4];
    if (alibi_init) {
      const float slope_raw = p.alibi_slopes[h] * kLog2e / scale_log2;
      const int64_t key_minus_row = (p.k_offset + n0 + 2 * (lane % 4)) - (p.q_offset + m0 + wr + lane / 4);
      alibi_scores<MT, NT>(s, slope_raw, slope_raw * static_cast<float>(key_minus_row));
    } else {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < NT; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
    }
    warp_tile_mma<T, D / 16, D, D, BLayout::nk>(s, q_base, 0, wr, k_base, boff, 0);
    // Interior tiles keep raw scores and scale inside the exponent's FMA (max commutes with
    // a positive scale); masked tiles come back scaled, with -inf where hidden.
    float mult = scale_log2;
    if (masked || (!raw_max && !alibi_init)) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const MaskRows m = mask_rows(p, b, h, m0 + wr + 16 * mt + lane / 4);
        if (masked) apply_mask<NT>(s[mt], p, b, m, n0 + 2 * (lane % 4), scale_log2);
        else apply_bias<NT>(s[mt], p, m, n0 + 2 * (lane % 4), scale_log2);
      }
      mult = 1.f;
    }

    // Online softmax; the row max is shared by the 4 threads of a quad. The running max is
    // only raised when a tile's max exceeds it by more than kRescaleSlack (log2 units), so
    // P stays <= 2^kRescaleSlack and most tiles skip rescaling O (exact: sum and O share the
    // max that was used). Rescaling is warp-uniform: all rows or none.
    constexpr float kRescaleSlack = 8.f;
    float mx[MT][2];
    bool grow = false;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float m = -CUDART_INF_F;
#pragma unroll
        for (int j = 0; j < NT; ++j) m = fmaxf(m, fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        mx[mt][r] = m * mult;
        grow |= mx[mt][r] > row_max[mt][r] + kRescaleSlack;
      }
    if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float m_new = fmaxf(row_max[mt][r], mx[mt][r]);
          // exp2(-inf - -inf) would be NaN; O and the sum are 0 while the max is -inf.
          const float alpha = m_new == -CUDART_INF_F ? 1.f : fast_exp2(row_max[mt][r] - m_new);
          row_max[mt][r] = m_new;
          row_sum[mt][r] *= alpha;
#pragma unroll
          for (int j = 0; j < DT; ++j) {
            o[mt][j][2 * r] *= alpha;
            o[mt][j][2 * r + 1] *= alpha;
          }
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float m_use = row_max[mt][r] == -CUDART_INF_F ? 0.f : row_max[mt][r];  // never s - (-inf)
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          s[mt][j][2 * r] = fast_exp2(fmaf(s[mt][j][2 * r], mult, -m_use));
          s[mt][j][2 * r + 1] = fast_exp2(fmaf(s[mt][j][2 * r + 1], mult, -m_use));
          sum += s[mt][j][2 * r] + s[mt][j][2 * r + 1];
        }
        row_sum[mt][r] += sum;
      }

    // O += P V, P straight from the score registers.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dj = 0; dj < D / 16; ++dj) {
        uint32_t bf[4];
        ldsm_x4_trans(bf, ldsm_at<D>(v_base, kk * 16, dj * 16) + boff);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(o[mt][2 * dj], a[mt], bf[0], bf[1]);
          mma16816<T>(o[mt][2 * dj + 1], a[mt], bf[2], bf[3]);
        }
      }
    }
  }

  if (p.tile_counter && tid == 0) atomicAdd(p.tile_counter, static_cast<unsigned long long>(n_tiles));
  // Normalize and store O and lse (natural log).
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int64_t row = m0 + wr + 16 * mt + lane / 4 + 8 * r;
      if (row >= p.seqlen_q) continue;
      const float inv = l > 0.f ? 1.f / l : 0.f;
      char* orow = static_cast<char*>(p.o) + (b * p.o_stride[0] + row * p.o_stride[1] + h * p.o_stride[2]) *
                                                 (p.o_dtype == DType::f32 ? 4 : 2);
#pragma unroll
      for (int j = 0; j < DT; ++j) {
        const int col = j * 8 + 2 * (lane % 4);
        const float x = o[mt][j][2 * r] * inv, y = o[mt][j][2 * r + 1] * inv;
        if (p.o_dtype == DType::f32) {
          *reinterpret_cast<float2*>(reinterpret_cast<float*>(orow) + col) = make_float2(x, y);
        } else {
          *reinterpret_cast<uint32_t*>(reinterpret_cast<T*>(orow) + col) = pack2<T>(x, y);
        }
      }
      if (lane % 4 == 0) {
        float* lse = static_cast<float*>(p.lse) + b * p.lse_stride[0] + h * p.lse_stride[1];
        lse[row] = l > 0.f ? (row_max[mt][r] + log2f(l)) * kLn2 : -CUDART_INF_F;
      }
    }
}

}  // namespace lctx::attn
