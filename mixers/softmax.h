// Softmax attention as a mixer: causal attention over the whole sequence (or a sliding window)
// on top of the AttentionCore, computed by one of the sequence-parallel strategies of dist/:
//   local       one rank holds the whole sequence: attn::flash_forward/backward
//   ring        K/V passed around the ring group (zigzag or contiguous shards)
//   all_gather  K/V gathered once over the ring group, dK/dV reduce-scattered back
//   ulysses     all-to-all over heads inside the Ulysses group (ring of one rank)
//   hybrid      Ulysses inside groups, ring across them (USP)
// head_groups computes the heads in groups, one after another: the same result, with the
// temporaries of each call (ring buffers, fp32 accumulators, cuDNN scratch) divided by the
// groups. ALiBi slopes are per-head values, sliced per group. Packed documents (Tokens::doc_ids)
// keep every query to the keys of its document under every strategy; their host description
// (Tokens::documents) lets ring attention skip blocks that share no document.
#pragma once
#include <memory>
#include <string_view>

#include "attn/flash.h"
#include "mixers/attention_core.h"

namespace lctx::dist {
class Mesh;
class Layout;
}  // namespace lctx::dist

namespace lctx::mixers {

enum class SeqParallel { local, ring, all_gather, ulysses, hybrid };
std::string_view seq_parallel_name(SeqParallel s);

struct SoftmaxOptions {
  AttentionCoreOptions core;
  SeqParallel sp = SeqParallel::local;
  attn::AttnBackend backend = attn::AttnBackend::automatic;
  int64_t head_groups = 1;
  double softmax_scale = 0.0;  // 0: 1/sqrt(head_dim)
  int64_t window = 0;          // 0: every earlier key; w > 0: keys [i - w + 1, i]
};

struct SoftmaxSaved final : Saved {
  QkvActs qkv;  // dropped after a Pass::checkpoint forward, rebuilt by Pass::recompute
  Tensor o;     // [B, L, H, hd] attention output (kept)
  Tensor lse;   // f32 [B, H, L] (kept)
  Tensor y;     // [B, L, D]; the backward writes d(o) over it
};

// The mesh (its ring and Ulysses groups) and the layout of the tokens must outlive the mixer.
std::unique_ptr<Mixer> make_softmax_mixer(const SoftmaxOptions& o, dist::Mesh& mesh, const dist::Layout& layout);

// ALiBi slopes 2^(-8 (h+1) / H') for the largest power of two H' <= H, then the interleaved
// slopes of the ALiBi paper for the remaining heads; f32 [H] on the CPU.
Tensor alibi_slopes(int64_t heads);

}  // namespace lctx::mixers
