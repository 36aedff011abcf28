// DeepSeek Native Sparse Attention as a mixer (kind `nsa`, issue 20), causal, on top of the
// AttentionCore (q/k/v and output projections, RoPE, GQA). Per query i and head h, three exact
// softmax branches over the same q/k/v, mixed by learned sigmoid gates:
//   compressed  one K/V row per complete block of b_c tokens that ends at or before i (block c =
//               positions [c b_c, (c + 1) b_c), visible when (c + 1) b_c - 1 <= i): the block's mean
//               (`compress: mean`) or NSA's learned MLP over its rows (`compress: mlp`,
//               mixers/block_mlp.h: parameters cmp_{k,v}_{pos,w1,b1,w2,b2} after the gate's);
//   selected    the key blocks of b_s tokens that the query's block picked (below), every key of a
//               picked block visible except in the query's own (local) block, which is causal;
//   window      the keys i - w < j <= i;
//   o = g_c o_cmp + g_s o_sel + g_w o_win,  (g_c, g_s, g_w) = sigmoid(x W_g^T + b_g) per head and
//   token: `w_gate` [3 H, dim], `gate_bias` [3 H] (rows c, s, w, each H heads; bias starts at 0).
// Selection, per query block t (rows [t b_s, (t + 1) b_s)) and KV head (shared by its GQA group):
// the score of key block j <= t is the compressed branch's attention probability summed over the
// group's heads and the block's rows, mapped from compressed blocks to selection blocks by overlap:
//   score_j = sum_{i, h, c} p_cmp(i, h, c) * |block c ∩ block j| / b_c
// (any b_c, b_s: with b_s a multiple of b_c a selection block sums its compressed blocks, with b_c
// a multiple of b_s each compressed block's probability is split evenly over the selection blocks
// it covers). Block 0 and the local block t are always picked; the other min(n, t + 1) - |{0, t}|
// are the highest scores among 0 < j < t, ties to the lower index. The selection is piecewise
// constant in the inputs: no gradient flows through it. A query with no visible compressed row
// (i < b_c - 1) has o_cmp = 0; a query block with t + 1 <= n takes every block before it.
// The selected branch is lib/attn/block_select.h over the picked blocks j < t (every pair visible)
// merged by LSE with the local block, one causal flash call with the query blocks folded into
// its batch (block-diagonal causal), so the window need not cover the local block.
//
// Sequence parallelism (ring, zigzag or contiguous; no Ulysses); b_s divides the layout's
// segments so that each query block, and its selection, lies on one rank:
//   window      ring attention (no longer than a segment: halo exchange, dist/window_attention.h);
//   compressed  mixers/block_means.h: one all-reduce of the S / b_c block sums, backward the same;
//               mlp (block_mlp.h): b_c must also divide the segments; each rank compresses its own
//               blocks, one all-reduce of the rows, backward the same;
//   selected    the union over the ranks of the picked blocks (a bitmap all-reduce) gathered by
//               dist::row_gather, gradients back to their owners by row_gather_backward;
//   gate        replicated parameters: each rank's gradient is its own tokens', summed by the trainer.
// Pass::checkpoint keeps the three branch outputs with their lse, the compressed rows, the
// selection and the gathered blocks (everything that communicates); Pass::recompute redoes the
// projections, the gate and the mix.
// Devices: CPU (f32/f64) and CUDA (bf16/f16 compute at flash's head dims): every attention part
// is a flash call, the selection scores are mixers/nsa_scores.h, the gated mix ops/gate_mix.h,
// the mean pooling ops/row_pool.h, the learned compression mixers/block_mlp.h.
// Not here: overlapping compression blocks (stride < b_c), packed documents, ALiBi, Ulysses.
#pragma once
#include <memory>
#include <vector>

#include "attn/block_select.h"
#include "mixers/attention_core.h"

namespace lctx::dist {
class Mesh;
class Layout;
}  // namespace lctx::dist

namespace lctx::mixers {

enum class NsaCompress { mean, mlp };

struct NsaOptions {
  AttentionCoreOptions core;
  int64_t window = 0;          // w in [1, seq_len]
  int64_t compress_block = 0;  // b_c in [1, seq_len]
  NsaCompress compress = NsaCompress::mean;
  int64_t compress_hidden = 64;  // mlp: the compression MLP's hidden width (>= 1)
  int64_t select_block = 0;    // b_s: divides every segment of the layout
  int64_t top_n = 0;           // n in [2, seq_len / b_s]: picked blocks per query block, 0 and local included
  double softmax_scale = 0.0;  // 0: 1/sqrt(head_dim)
};

// The picked blocks of this rank's query blocks, and the blocks gathered for them.
struct NsaSelection {
  // The picked blocks other than the local one, per (batch, KV head, local query block), as
  // indices into the gathered blocks (q_block = k_block = b_s, per_query = n - 1).
  attn::KeyBlocks blocks;
  std::vector<int64_t> gathered;   // global selection blocks gathered (any rank's pick), ascending
  std::vector<int64_t> positions;  // their rows' global positions (the row_gather list)
};

struct NsaSaved final : Saved {
  QkvActs qkv;            // the sequence's q/k/v (dropped by Pass::checkpoint)
  Tensor comp_k, comp_v;  // [B, S / b_c, Hkv, hd]: the compressed rows (kept)
  NsaSelection sel;       // (kept)
  Tensor sel_k, sel_v;    // [B, gathered rows, Hkv, hd] (kept)
  Tensor o_cmp, lse_cmp;  // [B, L, H, hd], wide [B, H, L] per branch (kept)
  Tensor o_sel, lse_sel;
  Tensor o_win, lse_win;
  Tensor gate;  // [B, L, 3 H]: the gate logits, before the sigmoid (ops::gate_mix) (dropped)
  Tensor o;     // the gated output [B, L, H, hd] (dropped)
  Tensor y;     // [B, L, D]
};

// The mesh (its sp group) and the layout must outlive the mixer.
std::unique_ptr<Mixer> make_nsa_mixer(const NsaOptions& o, dist::Mesh& mesh, const dist::Layout& layout);

}  // namespace lctx::mixers
