// Per-element work on a warp's score fragment in both flash kernels. apply_mask (tiles at an
// edge) turns raw q.k scores into log2-domain logits, -inf where the key is out of range, on
// the wrong side of the causal diagonal or window, in another document or hidden by the block
// mask's rule (partial tiles of a block mask), and adds ALiBi;
// apply_bias (tiles every pair of which is visible) only scales and adds ALiBi;
// alibi_scores serves the forward's tiles whose keys all lie at or before their queries, where
// -slope |i - j| = slope (j - i) needs no |.|: it starts Q K^T from the bias in raw-score units,
// one FMA per element, and the tile then runs as one without ALiBi (the |.| form costs three
// per element and a scaling pass before the max).
#pragma once
#include <math_constants.h>

#include "attn/flash_params.h"
#include "core/cuda/fast_math.cuh"

namespace lctx::attn {

// The two query rows (row, row + 8) a thread holds in an m16 fragment.
struct MaskRows {
  int64_t row[2];
  int32_t doc[2];       // document ids (when p.has_docs())
  float alibi_log2;     // slope * log2e (when p.has_alibi())
};

__device__ __forceinline__ MaskRows mask_rows(const FlashParams& p, int64_t b, int h, int64_t row_a) {
  MaskRows m;
  m.row[0] = row_a;
  m.row[1] = row_a + 8;
  for (int r = 0; r < 2; ++r)
    m.doc[r] = p.q_doc_ids && m.row[r] < p.seqlen_q ? p.q_doc_ids[b * p.q_doc_stride + m.row[r]] : 0;
  m.alibi_log2 = p.alibi_slopes ? p.alibi_slopes[h] * kLog2e : 0.f;
  return m;
}

// s[j][e]: column col0 + 8j + (e & 1) (col0 includes the thread's 2 * (lane % 4)), row e / 2.
// The position rules are evaluated on d = qpos - kpos relative to the fragment's first
// element, in 32-bit (the bounds are clamped to a range wider than one fragment), to keep
// the masked path light on registers next to the kernels' accumulators.
template <int NT>
__device__ __forceinline__ void apply_mask(float (&s)[NT][4], const FlashParams& p, int64_t b, const MaskRows& m,
                                           int64_t col0, float scale_log2) {
  constexpr int64_t kBig = int64_t(1) << 40;
  constexpr int kClamp = 8 * NT + 64;
  // visible iff lo <= d <= hi, d = d0 + 8 (e / 2) - 8 j - (e & 1)
  const int64_t d0 = (p.q_offset + m.row[0]) - (p.k_offset + col0);
  int64_t lo = p.causal ? 0 : -kBig, hi = p.window_left >= 0 ? p.window_left : kBig;
  if (p.window_right >= 0 && -p.window_right > lo) lo = -p.window_right;
  const int lo_r = static_cast<int>(max(min(lo - d0, int64_t(kClamp)), int64_t(-kClamp)));
  const int hi_r = static_cast<int>(max(min(hi - d0, int64_t(kClamp)), int64_t(-kClamp)));
  const int col_lim = static_cast<int>(max(min(p.seqlen_k - col0, int64_t(kClamp)), int64_t(-1)));
  const bool row_ok[2] = {m.row[0] < p.seqlen_q, m.row[1] < p.seqlen_q};
  const float d0f = static_cast<float>(d0);
  // Block mask rule (partial tiles of a block mask) as bits 2 NT r + 2 j + c, in a loop kept
  // rolled so that the unrolled element loop below stays light on registers.
  static_assert(NT <= 8, "one 32-bit word of sparse bits per m16 fragment");
  const bool sparse = p.has_sparse();
  uint32_t sparse_bits = 0;
  if (sparse) {
#pragma unroll 1
    for (int e = 0; e < 4 * NT; ++e) {
      const int64_t row = e >= 2 * NT ? m.row[1] : m.row[0];
      const int dc = 8 * ((e % (2 * NT)) / 2) + (e & 1);
      if (row < p.seqlen_q && col0 + dc < p.seqlen_k &&  // the random bitmap has no rows past the end
          sparse_visible(p.sparse, p.q_offset + row, p.k_offset + col0 + dc))
        sparse_bits |= 1u << e;
    }
  }
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int dc = 8 * j + c;
      const bool col_ok = dc < col_lim;
      int32_t kdoc = 0;
      if (p.k_doc_ids && col_ok) kdoc = p.k_doc_ids[b * p.k_doc_stride + col0 + dc];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int off = 8 * r - dc;
        bool vis = row_ok[r] && col_ok && off >= lo_r && off <= hi_r;
        if (p.k_doc_ids) vis = vis && kdoc == m.doc[r];
        if (sparse) vis = vis && ((sparse_bits >> (2 * NT * r + 2 * j + c)) & 1u);
        float x = s[j][2 * r + c] * scale_log2;
        if (p.alibi_slopes) x -= m.alibi_log2 * fabsf(d0f + static_cast<float>(off));
        s[j][2 * r + c] = vis ? x : -CUDART_INF_F;
      }
    }
}

template <int NT>
__device__ __forceinline__ void apply_bias(float (&s)[NT][4], const FlashParams& p, const MaskRows& m, int64_t col0,
                                           float scale_log2) {
  const float d0f = static_cast<float>((p.q_offset + m.row[0]) - (p.k_offset + col0));
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float d = d0f + static_cast<float>(8 * (e / 2) - 8 * j - (e & 1));
      s[j][e] = fmaf(s[j][e], scale_log2, -m.alibi_log2 * fabsf(d));
    }
}

// The initial value of a Q K^T accumulator (MT m16 fragments 16 rows apart over the same
// columns, as in apply_mask): slope_raw (j - i), i.e. ALiBi in raw-score units
// (slope_raw = slope / softmax scale), on a tile whose keys all lie at or before its queries.
// key0 = slope_raw (key position of the thread's first column - query position of its first row).
template <int MT, int NT>
__device__ __forceinline__ void alibi_scores(float (&s)[MT][NT][4], float slope_raw, float key0) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[mt][j][e] = fmaf(slope_raw, static_cast<float>(8 * j + (e & 1) - 16 * mt - 8 * (e / 2)), key0);
}

}  // namespace lctx::attn
