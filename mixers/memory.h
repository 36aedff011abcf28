// Cross-memory attention as a mixer (kind `memory`, issue 20): each query attends to a local
// sliding window and, by a second softmax, to a memory of learned tokens and compressed blocks
// of the past; the two outputs are fused by a fusion ratio or a learned per-head gate. On top of
// the AttentionCore (q/k/v and output projections, RoPE, GQA). Causal; per query i and head h:
//   o_local  = softmax attention over the keys i - w < j <= i                      (window w)
//   o_memory = softmax attention over [the M memory tokens; compressed rows c with (c + 1) b <= i]
//   o        = (1 - r) o_local + r o_memory,   r = fusion_ratio, or r = sigmoid(x W_g^T + b_g)[h]
// The memory tokens are one [M, dim] parameter `memory_tokens` per layer, fed through the
// layer's own q/k/v projection at position 0 (RoPE leaves them unrotated). Compressed row c is
// the mean of the K rows (after RoPE, as attention reads them) and of the V rows of block c,
// positions [c b, (c + 1) b); a trailing partial block is never visible and not formed. A query
// with no memory (M = 0 and i < b) gets o_memory = 0. With fusion: gate, `w_gate` [H, dim] and
// `gate_bias` [H] (starting at 0) make r per head and token. The memory part is
// cross-attention (mixers/cross_attention.h): one flash call over the memory tokens, and the
// compressed rows at positions (c + 1) b, so that a block's queries see the blocks before it.
//
// Sequence parallelism (any ring size, zigzag or contiguous; no Ulysses):
//   window      ring attention: a window no longer than a segment by halo exchange
//               (dist/window_attention.h: the w - 1 K/V rows before each segment);
//   compressed  each rank sums the K/V rows it holds into their blocks' rows (a block may span
//               segments and ranks: no condition on the layout), one all-reduce of the
//               [2, B, S / b, Hkv, hd] sums gives every rank the same rows; backward: the
//               compressed rows' gradients of every rank's queries all-reduced the same way, each
//               rank spreads 1 / b of a row's gradient over the K/V rows of the block it holds;
//   memory      replicated parameters (memory tokens, gate): each rank's gradient is its own
//               queries' part, summed over ranks by the trainer with every other gradient.
// Pass::checkpoint keeps o_local, o_memory, their lse and the compressed rows (what needs
// communication); Pass::recompute redoes the projections, the gate and the fusion without
// communicating.
// Not here: a learned compression MLP (NSA), packed documents (the registry refuses
// data.documents), ALiBi (a bias on distances; memory tokens have none), Ulysses.
// Devices: CPU (f32/f64) and CUDA: the block pooling is ops::row_pool, the fusion ops::blend,
// the attention parts ring, flash and cross-attention.
#pragma once
#include <memory>

#include "mixers/attention_core.h"

namespace lctx::dist {
class Mesh;
class Layout;
}  // namespace lctx::dist

namespace lctx::mixers {

enum class MemoryFusion { ratio, gate };

struct MemoryOptions {
  AttentionCoreOptions core;
  int64_t window = 0;         // w in [1, seq_len]
  int64_t memory_tokens = 0;  // M >= 0 learned tokens
  int64_t block = 0;          // b in [1, seq_len]: tokens per compressed block
  MemoryFusion fusion = MemoryFusion::ratio;
  double fusion_ratio = 0.5;  // r in [0, 1] (fusion: ratio)
  double softmax_scale = 0.0;  // 0: 1/sqrt(head_dim)
};

struct MemorySaved final : Saved {
  QkvActs qkv;                    // the sequence's q/k/v (dropped by Pass::checkpoint)
  QkvActs mem;                    // the memory tokens' q/k/v [1, M, ...] (dropped)
  Tensor mem_k, mem_v;            // [B, M, Hkv, hd]: the memory tokens' K/V every query sees (dropped)
  Tensor comp_k, comp_v;          // [B, S / b, Hkv, hd]: the compressed rows (kept)
  Tensor o_local, lse_local;      // [B, L, H, hd], wide [B, H, L] (kept)
  Tensor o_memory, lse_memory;    // the same for the memory softmax (kept)
  Tensor gate;                    // fusion: gate, the logits of r [B, L, H] (dropped)
  Tensor o;                       // the fused output [B, L, H, hd] (dropped)
  Tensor y;                       // [B, L, D]
};

// The mesh (its sp group) and the layout must outlive the mixer.
std::unique_ptr<Mixer> make_memory_mixer(const MemoryOptions& o, dist::Mesh& mesh, const dist::Layout& layout);

}  // namespace lctx::mixers
