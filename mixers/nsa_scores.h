// NSA's selection scores (mixers/nsa.h): for each of this rank's query blocks t (rows
// [t b_s, (t + 1) b_s), consecutive positions from a multiple of b_s, global block qb) and KV
// head kh, the score of every key block j <= qb,
//   score_j = sum over the block's rows i, the group's heads h and the compressed rows c that i
//             sees ((c + 1) b_c - 1 <= pos_i) of p_cmp(i, h, c) |block c ∩ block j| / b_c,
// with p_cmp(i, h, c) = exp(q_{i,h} . ck_{c,kh} scale - lse_{h,i}) recomputed from the compressed
// softmax's log-sum-exp, never stored. nsa_pick_blocks picks from them (on the device on CUDA).
// CPU: f64 sums in the order (row, head, compressed row) (the reference). CUDA
// (nsa_scores.cu): a thread block per (batch, KV head, query block), fp32 math; it sums each
// compressed row's probabilities over (row, head) in a fixed order and then shares them out to
// the selection blocks in ascending c, so the result is deterministic and the selection blocks
// that one compressed row alone covers (b_s < b_c) tie exactly, as on the CPU.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/tensor.h"

namespace lctx::mixers {

struct NsaScoring {
  int64_t compress_block = 0;  // b_c >= 1
  int64_t select_block = 0;    // b_s >= 1, divides the rows
  int64_t blocks = 0;          // the sequence's selection blocks: the scores' columns
  float softmax_scale = 0.0f;  // 0: 1/sqrt(head_dim)
};

// q [B, L, H, hd] at global `positions` (L host positions, local order), ck [B, Nc, Hkv, hd] of
// q's dtype, lse [B, H, L] in wide_dtype(q) (f32; f64 for f64). Returns the scores
// [B Hkv T, blocks] (T = L / b_s, row (b Hkv + kh) T + t) on q's device, zero past each query
// block's own block qb: f64 on the CPU, f32 on CUDA.
Tensor nsa_selection_scores(const Tensor& q, const Tensor& ck, const Tensor& lse, std::span<const int64_t> positions,
                            const NsaScoring& sc, Stream s = {});

// The selected branch's key blocks from the scores: for row r of scores [R, blocks] (a query
// block whose own block is own[r], < blocks), block 0, own[r] and the best of the blocks between
// by score (ties to the lower block): min(top_n, own[r] + 1) blocks, ascending, then -1 up to
// top_n (>= 2). Returns the picks [R * top_n] on the host. On CUDA they are made on the
// device and only they are copied (the scores of a long sequence are R x blocks floats).
std::vector<int64_t> nsa_pick_blocks(const Tensor& scores, std::span<const int64_t> own, int64_t top_n,
                                     Stream s = {});
constexpr int64_t kNsaMaxPicksCuda = 1024;  // larger top_n: CUDA scores are picked on the host

namespace detail {
#ifdef LCTX_HAVE_CUDA
// The CUDA half of nsa_pick_blocks: scores f32 [R, blocks], own i64 [R] and out i32 [R, top_n]
// on the device.
void nsa_pick_blocks_cuda(const Tensor& out, const Tensor& scores, const Tensor& own, int64_t top_n, Stream s);
// The CUDA half: q, ck, lse contiguous and checked, starts [T] i64 the first position of each
// query block (on q's device), out f32 [B Hkv T, blocks] overwritten.
void nsa_selection_scores_cuda(const Tensor& out, const Tensor& q, const Tensor& ck, const Tensor& lse,
                               const Tensor& starts, const NsaScoring& sc, Stream s);
#endif
}  // namespace detail

}  // namespace lctx::mixers
