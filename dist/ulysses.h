// Ulysses sequence parallelism (DeepSpeed-Ulysses), and the hybrid with ring attention (USP):
// an all-to-all inside the Ulysses group turns sequence-sharded q/k/v [B, L, H, D] into
// head-sharded [B, U*L, H/U, D] (the tokens of the whole ring rank), ring attention runs over
// the ring group on that head subset, and a second all-to-all turns the output back. With a
// ring of one rank this is plain Ulysses (one local flash call per step-0 block).
//
// Heads: U must divide Hq. K/V heads are sharded when U divides Hkv; when Hkv divides U
// (fewer KV heads than ranks) each KV head is replicated to the U/Hkv ranks whose query heads
// use it and its gradients are summed over the replicas (in fp32, in rank order); anything
// else is an error naming the degrees. ALiBi slopes and document ids follow the heads/tokens.
// Layout: Layout(kind, S, ring, ulysses); inputs are Layout::shard of sp rank
// ring_rank * U + ulysses_rank (Mesh's numbering); o/lse/grads come back sequence-sharded.
#pragma once
#include "attn/flash.h"
#include "dist/comm.h"
#include "dist/layout.h"
#include "dist/ring_attention.h"

namespace lctx::dist {

// o [B, L, Hq, D] (dtype of q), lse [B, Hq, L] (wide): this rank's rows.
attn::FlashOutput ulysses_attention_forward(Comm& ulysses, Comm& ring, const Layout& layout, const Tensor& q,
                                            const Tensor& k, const Tensor& v, const attn::FlashOptions& opts,
                                            RingMode mode = RingMode::ring, Stream s = {});

// Gradients in the dtypes of q, k, v.
attn::FlashGrads ulysses_attention_backward(Comm& ulysses, Comm& ring, const Layout& layout, const Tensor& q,
                                            const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                            const Tensor& dout, const attn::FlashOptions& opts,
                                            RingMode mode = RingMode::ring, Stream s = {});

}  // namespace lctx::dist
