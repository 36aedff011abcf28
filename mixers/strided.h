// Strided attention as a mixer (issue 19's `strided` kind): the Sparse Transformer pattern --
// each query sees a causal window of w keys plus every earlier key with (i - j) mod s == 0 --
// computed by attn/strided_attention.h (the window and the residue subsequences as two dense
// flash calls merged by their LSE) on top of the AttentionCore (q/k/v/out projections, GQA,
// RoPE or no positions, QK-norm). Two layers reach every earlier position: a window hop, then a
// stride hop. ALiBi is refused (the strided part runs in residue coordinates, where the bias
// would be the distance divided by s), and so are packed documents.
//
// Sequence parallelism, any layout and any ring x Ulysses split of the sp group: a query's
// strided keys reach back to position 0, and a rank holding s or more consecutive positions
// has queries of every residue, so every earlier key is some query's strided key: a rank needs
// all earlier K/V, not a neighbourhood. The K/V rows of the whole sequence are gathered once
// over the sp group (dist::row_gather: one all-gather of B x S x 2 Hkv x hd elements, what
// all-gather ring attention moves), and each run of consecutive positions the rank holds
// (Layout::segments: one under contiguous shards, two under zigzag) is attended against the
// keys [0, run end) by strided_attention's query range.
// The backward gathers K/V again (no copy of the sequence is kept), sums each run's dK/dV in
// fp32 and reduce-scatters them to their owners (row_gather_backward). There is no head
// all-to-all, so every parallel.ulysses works whatever the heads; zigzag shards balance the
// causal work, contiguous ones leave it to the last ranks.
#pragma once
#include <memory>

#include "attn/flash.h"
#include "mixers/attention_core.h"

namespace lctx::dist {
class Mesh;
class Layout;
}  // namespace lctx::dist

namespace lctx::mixers {

struct StridedMixerOptions {
  AttentionCoreOptions core;  // position rope or none
  int64_t window = 64;        // w >= 1: keys i - w < j <= i
  int64_t stride = 64;        // s >= 1: plus the earlier keys with (i - j) mod s == 0
  double softmax_scale = 0.0;  // 0: 1/sqrt(head_dim)
  attn::AttnBackend backend = attn::AttnBackend::automatic;
};

struct StridedSaved final : Saved {
  QkvActs qkv;  // dropped after a Pass::checkpoint forward, rebuilt by Pass::recompute
  Tensor o;     // [B, L, H, hd] attention output (kept)
  Tensor lse;   // wide [B, H, L] (kept)
  Tensor y;     // [B, L, D]; the backward writes d(o) over it
};

// The mesh (its sp group) and the layout of the tokens must outlive the mixer.
std::unique_ptr<Mixer> make_strided_mixer(const StridedMixerOptions& o, dist::Mesh& mesh, const dist::Layout& layout);

}  // namespace lctx::mixers
