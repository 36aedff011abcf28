// Local + global attention as a mixer (kind `local_global`, issue 19): a sliding window plus
// global tokens, exact softmax over the union, on top of the AttentionCore (q/k/v and output
// projections, RoPE, GQA). Each query's keys come in parts, each computed by flash (or ring
// attention) with fp32 partial outputs and merged exactly by their log-sum-exp
// (dist::merge_attention), so no pair is counted twice and no dense mask is built.
//
// The g global tokens are learned, one [g, dim] parameter `global_tokens` per layer, fed
// through the layer's own q/k/v projection at position 0 (RoPE leaves them unrotated; ALiBi,
// a bias on distances, is refused).
//
// Causal form (LM): query i sees
//   window:  keys i - w < j <= i              ring attention with a window (neighbours only)
//   sinks:   the g learned tokens' K/V        flash, no mask (attention sinks)
//   first:   positions j < p with j <= i - w  flash, causal, k_offset = w (the first p
//            positions the window no longer covers), per local segment of the layout.
// Bidirectional (encoder) form (causal: false), Longformer/ETC-style global tokens in two stages:
//   1. the global tokens' queries (from global_tokens through Wq) attend to every sequence token
//      and to the global tokens themselves (K/V from global_tokens): o_g, no mask;
//   2. h = global_tokens + o_g Wo^T (the global tokens' stream after this attention, as a residual
//      block writes it), projected by Wk, Wv (at position 0) to the K/V every sequence query sees
//      besides its bidirectional window |i - j| < w. The sequence tokens' outputs are the mixer's.
//   A far token therefore reaches every query in one layer through the global tokens, and the
//   gradients of both stages reach global_tokens (and Wqkv, Wo through both uses).
//
// Sequence parallelism (any ring size, zigzag or contiguous; no Ulysses):
//   window   ring attention: a causal window by halo exchange (dist/window_attention.h: the
//            w - 1 K/V rows before each segment), a bidirectional one by the ring steps it
//            reaches (dist/ring_schedule.h), never the whole ring;
//   first    the K/V rows of positions [0, p) by dist::row_gather (one all-gather of just those
//            rows); their dK/dV summed back into the owners by its reduce-scatter;
//   sinks    replicated parameters: each rank's gradient is its own queries' part, summed over
//            ranks with every other parameter gradient by the trainer (nothing summed here);
//   stage 1  each rank's partial (o, lse) of the global queries over its own tokens, all-gathered
//            over the sp group and merged in fp32 in rank order (the same bits on every rank;
//            R x B x g x H x hd fp32 per rank and layer); the global queries' own keys once.
//            Backward: d(o_g) of each rank's queries summed over the group (one all-reduce); then
//            each rank's tokens get their dK/dV from it, and rank 0 alone adds the global tokens'
//            self part, so the trainer's sum counts it once.
// BigBird random key blocks (random_blocks r > 0, both forms): the sequence is cut into blocks
// of rb positions; each query block sees r key blocks drawn (attn::draw_distinct, the scheme of
// attn::random_block_mask) among those no other part reaches for any of its queries, so the LSE
// merge counts no pair twice: causal, blocks wholly at or after position p and wholly before
// every query of the block minus the window (j <= i - w); bidirectional, blocks wholly outside
// the window on either side (|i - j| >= w). Fewer candidates than r: all of them. The draw is
// a function of random_seed and the training step (begin_step; step 0 until called), the same
// on every rank, layer, batch row and head, so resume is exact. Computed by attn::block_select
// (the query blocks folded into batched flash calls). Under sequence parallelism rb divides
// the layout's segment length (a query block lies in one segment); the K/V rows of the union of
// the blocks drawn for the whole sequence are gathered by dist::row_gather (their dK/dV summed
// back by its reduce-scatter): for long sequences this union approaches the whole K/V on every
// rank (a per-rank all-to-all would bring only each rank's own blocks; not done).
// Pass::checkpoint keeps o, lse and the gathered first-p and random K/V and stage-1 (o_g,
// lse_g); Pass::recompute redoes the projections without communicating.
// Not here: packed documents (the registry refuses data.documents), Ulysses.
// CPU (f32/f64) and CUDA (bf16/f16, attn::flash's head dims): every op has both paths.
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

enum class LocalGlobalForm { causal, bidirectional };

struct LocalGlobalOptions {
  AttentionCoreOptions core;
  LocalGlobalForm form = LocalGlobalForm::causal;
  int64_t window = 0;          // w in [1, seq_len]: causal i - w < j <= i, bidirectional |i - j| < w
  int64_t global_tokens = 0;   // g in [0, seq_len] learned tokens
  int64_t first_tokens = 0;    // p in [0, seq_len] (causal form only)
  int64_t random_blocks = 0;   // r >= 0 random key blocks per query block (0: none)
  int64_t random_block_size = 64;  // rb: positions per block; divides the layout's segment length
  uint64_t random_seed = 0;    // with the step, the draw of the random blocks
  double softmax_scale = 0.0;  // 0: 1/sqrt(head_dim)
};

struct LocalGlobalSaved final : Saved {
  QkvActs qkv;                // the sequence tokens' q/k/v (dropped by Pass::checkpoint)
  QkvActs glob;               // the global tokens' q/k/v [1, g, ...] (dropped)
  Tensor glob_k, glob_v;      // [B, g, Hkv, hd]: the global K/V the sequence queries see (dropped)
  Tensor first_k, first_v;    // causal: K/V of positions [0, p), [B, p, Hkv, hd] (kept)
  Tensor go, glse;            // bidirectional: stage-1 output [B, g, H, hd] and lse [B, H, g] (kept)
  std::vector<int64_t> random_positions;  // the gathered random key rows' global positions (kept)
  attn::KeyBlocks random_blocks;          // this rank's query blocks' slots in them (kept)
  Tensor random_k, random_v;  // [B, random_positions.size(), Hkv, hd] (kept)
  Tensor h;                   // bidirectional: global_tokens + o_g Wo^T [B, g, D] (dropped)
  QkvActs hkv;                // bidirectional: q/k/v of h (dropped)
  Tensor o, lse;              // the sequence's output [B, L, H, hd] and f32 lse [B, H, L] (kept)
  Tensor y;                   // [B, L, D]
};

// The random key blocks of every query block of the sequence at training step `step`:
// [seq_len / rb][r] global key-block indices (key block kb = positions [kb rb, (kb + 1) rb)),
// -1 for empty slots. What the mixer attends to (and the tests' references build).
std::vector<int32_t> local_global_random_blocks(const LocalGlobalOptions& o, int64_t seq_len, int64_t step);

// The first segment of `layout` (any rank) whose length or start is not a multiple of rb, as
// its length, or 0 when every one is (random blocks need whole blocks per segment).
int64_t local_global_misfit_segment(const dist::Layout& layout, int64_t rb);

// The mesh (its sp group) and the layout must outlive the mixer.
std::unique_ptr<Mixer> make_local_global_mixer(const LocalGlobalOptions& o, dist::Mesh& mesh,
                                               const dist::Layout& layout);

}  // namespace lctx::mixers
