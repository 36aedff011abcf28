// Block-select attention: each query block attends to its own list of key blocks, every pair
// of a listed block visible (BigBird random key blocks, NSA's selected blocks). Exact softmax
// over the listed keys, with its log-sum-exp so the result merges with other parts
// (dist::merge_attention). Lists are per KV head, so a GQA group shares one selection.
//
// No kernel of its own: the query blocks are folded into the batch of attn::flash. Every
// (batch, KV head, query block) becomes one batch entry with its q_block rows x the group's
// Hq / Hkv query heads (one KV head) and its listed key blocks gathered into c * k_block key
// rows; entries are grouped by their count c of listed blocks, one flash call per count, so no
// padding or mask is needed. Rows are gathered and scattered by index (ops::embedding), the
// backward scatter-adds dK/dV over the gathered rows (a key row listed by several query blocks
// sums their gradients; on CUDA by fp32 atomics, so the last bits may vary from run to run).
// Any device: CPU f32/f64 (the flash reference), CUDA bf16/f16 (the flash kernels' head dims).
// The lists live on the host; their indices are uploaded per call.
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

}  // namespace lctx::attn
