// Cross-attention: exact softmax attention of the layer's queries over a separate set of
// key/value rows (learned memory tokens, compressed blocks of the past, or an external stream
// such as encoder or image features given to a mixer), forward and backward; a building block
// of the memory kinds (mixers/memory.h).
//
// Memory rows may have positions: query row i (at q_positions[i]) sees memory row j (at
// k_positions[j]) iff k_positions[j] <= q_positions[i]; without key positions every query sees
// every row. Key positions are non-decreasing, so each query sees a prefix of the rows: the
// queries are cut into runs of consecutive rows that see the same prefix and each run is one
// unmasked attn::flash call over its prefix (about 2 L / b calls for block-compressed memory).
// Block memory itself (row c at position (c + 1) b - 1) over queries in whole blocks at
// consecutive rows takes fewer calls: the queries at offset t of their blocks, a stepped slice
// of the rows, attend causally in block units, the offsets t < b - 1 stacked as the batch of one
// call per segment (and batch row), t = b - 1 one more. Either way it runs
// wherever flash runs (CPU f32/f64, CUDA bf16/f16 at flash's head dims) with no kernel of its
// own and no dense mask.
//
// The forward returns a partial result to merge with other parts (dist::merge_attention):
// o [B, L, H, hd] and lse [B, H, L] in the wide dtype (f32; f64 for f64 inputs); a query that
// sees no row gets o = 0, lse = -inf. The backward takes the o and lse of the whole softmax the
// part belongs to (after merging, as a ring block does) and adds this part's dq, dk, dv into
// the caller's wide accumulators.
#pragma once
#include <cstdint>
#include <span>

#include "attn/flash.h"

namespace lctx::mixers {

struct CrossAttentionOptions {
  float softmax_scale = 0.0f;  // 0: 1/sqrt(head_dim)
  attn::AttnBackend backend = attn::AttnBackend::automatic;
};

// q [B, L, H, hd] at q_positions (L host positions; may be empty when k_positions is);
// k, v [B, N, Hkv, hd] at k_positions (N non-decreasing host positions, or empty: no mask).
attn::FlashOutput cross_attention_forward(const Tensor& q, std::span<const int64_t> q_positions, const Tensor& k,
                                          const Tensor& v, std::span<const int64_t> k_positions,
                                          const CrossAttentionOptions& opts, Stream s = {});

// Adds the gradients of this part into into.dq [B, L, H, hd] and into.dk, into.dv
// [B, N, Hkv, hd] (all wide), given the softmax's o, lse and dout of q's rows.
void cross_attention_backward(const Tensor& q, std::span<const int64_t> q_positions, const Tensor& k, const Tensor& v,
                              std::span<const int64_t> k_positions, const Tensor& o, const Tensor& lse,
                              const Tensor& dout, const CrossAttentionOptions& opts, const attn::FlashGrads& into,
                              Stream s = {});

}  // namespace lctx::mixers
