// Block-select attention: each query block attends to its own list of key blocks, every pair
// of a listed block visible (BigBird random key blocks, NSA's selected blocks). Exact softmax
// over the listed keys, with its log-sum-exp so the result merges with other parts
// (dist::merge_attention). Lists are per KV head, so a GQA group shares one selection.
//
// No attention kernel of its own: the query blocks are folded into the batch of attn::flash.
// Every (batch row, KV head, query block) becomes one batch entry of one head whose q_block x
// G rows are the block's rows times the group's G = Hq / Hkv query heads (one copy into that
// order), and whose keys are its listed blocks gathered into n x k_block rows (valid slots
// first; empty slots are zeros masked as another document, so the flash kernels skip them).
// Entries go in runs of consecutive query blocks of one (batch row, KV head), each run's
// scratch bounded (~512 MB), so memory stays flat at any length; a run whose lists are all
// full needs no mask (one plain call, which cuDNN runs). The backward sums each key
// block's gathered-row gradients in a fixed order (no atomics: deterministic). The lists live
// on the host; each run uploads its n slots per entry. Any device: CPU f32/f64 (the flash
// reference), CUDA bf16/f16 (the flash kernels' head dims).
//
// Also here: the seeded draw of distinct blocks that attn::random_block_mask and the
// local_global mixer's random key blocks share (one RNG scheme).
#pragma once
#include <cstdint>
#include <vector>

#include "attn/flash.h"

namespace lctx::attn {

// The key blocks of every query block. Query block t = query rows [t q_block, (t + 1) q_block);
// key block kb = key rows [kb k_block, (kb + 1) k_block). index[((b Hkv + h) T + t) n + i]
// (T = Sq / q_block, n = per_query) is slot i of query block t for batch row b and KV head h:
// a key block, or -1 for an empty slot. The valid entries of one list must be distinct (each
// pair counted once) and whole blocks of k ((kb + 1) k_block <= Sk); their order is free.
// A query block with no valid entry gets o = 0 and lse = -inf.
struct KeyBlocks {
  int64_t q_block = 0;         // query rows per query block (>= 1; divides Sq)
  int64_t k_block = 0;         // key rows per key block (>= 1)
  int64_t per_query = 0;       // n: slots per query block (>= 0)
  std::vector<int32_t> index;  // [B][Hkv][Sq / q_block][n]
};

// q [B, Sq, Hq, D], k, v [B, Sk, Hkv, D] (same device and dtype). opts: softmax_scale,
// out_dtype (OutputDType::f32 for an exact LSE merge) and backend only; every other rule
// (mask, window, offsets, documents, ALiBi, block mask) must be off: the lists are the rule.
// Returns o [B, Sq, Hq, D] and lse [B, Hq, Sq] (f32; f64 for f64 inputs), as flash_forward.
FlashOutput block_select_forward(const Tensor& q, const Tensor& k, const Tensor& v, const KeyBlocks& blocks,
                                 const FlashOptions& opts, Stream s = {});

// o, lse may be those of a larger attention this call is part of (after an LSE merge): the
// gradient is then this part's contribution (as flash_backward). Gradients are wide (f32; f64
// for f64 inputs), shapes of q, k, v. GradMode::overwrite: the defined tensors of `into` are
// overwritten, the undefined ones allocated; GradMode::accumulate: added into every tensor of
// `into` (all defined). Returns the gradients (handles on `into`'s storage where given).
FlashGrads block_select_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                 const Tensor& dout, const KeyBlocks& blocks, const FlashOptions& opts,
                                 GradMode mode = GradMode::overwrite, FlashGrads into = {}, Stream s = {});

// `count` distinct values in [0, n) (all of them when count >= n), in draw order, from splitmix64
// seeded by `seed` and `stream` (e.g. the query block): the same on every rank and every call.
std::vector<int64_t> draw_distinct(uint64_t seed, int64_t stream, int64_t n, int64_t count);

namespace detail {
#ifdef LCTX_HAVE_CUDA
// CUDA halves of the gather and the scatter (block_select.cu; the CPU loops are in
// block_select.cpp). Gather for batch row b and KV head h: lists i32 [E, n] (valid slots
// first, -1 after), k/v [B, Sk, Hkv, D] (any strides) into k_rows/v_rows
// [E, n k_block, 1, D] (zeros for empty slots) and ids i32 [E, n k_block] (0 listed, 1 empty).
void block_rows_gather_cuda(const Tensor& k, const Tensor& v, const Tensor& lists, int64_t b, int64_t h,
                            int64_t k_block, Tensor& k_rows, Tensor& v_rows, Tensor& ids, Stream s);
// Scatter: dk[b, t k_block + r, h] += the sum, over the sources (e n + slot) of key block
// t = targets[u] in sources[offsets[u] .. offsets[u + 1]), of dk_rows[e, slot k_block + r], in
// that order (dv alike); dk, dv f32 [B, Sk, Hkv, D] contiguous, the rows f32 [E, n k_block, 1, D].
void block_rows_scatter_cuda(const Tensor& dk_rows, const Tensor& dv_rows, const Tensor& targets,
                             const Tensor& offsets, const Tensor& sources, int64_t b, int64_t h, int64_t k_block,
                             Tensor& dk, Tensor& dv, Stream s);
#endif
}  // namespace detail

}  // namespace lctx::attn
