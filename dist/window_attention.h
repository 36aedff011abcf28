// Causal sliding-window attention over a sharded sequence by halo exchange: the sequence-parallel
// form ring attention takes (RingMode::ring) when the mask is a causal window of w keys
// (window_left = w - 1) no longer than a segment, without document ids. A query sees only the
// w - 1 positions before it, so each local segment needs just the K/V rows of the w - 1
// positions before its start (dist/halo.h: two neighbour exchanges on zigzag, one on
// contiguous), never whole K/V blocks: the bytes a rank sends are 2 (w - 1) K/V rows per
// segment forward, the same again and their fp32 dK/dV back in the backward, whatever the ring
// size or the sequence length.
// Per local segment (global start g, n rows):
//   local: flash over the segment alone (causal window, positions relative: cuDNN runs it
//          under the automatic backend), written in place into the rank's o / gradients;
//   halo:  the first min(w - 1, n) queries against the halo keys at positions [g - w + 1, g)
//          (fp32 partial output), merged into those rows by their log-sum-exp (merge_attention);
//          its dK/dV go back to the owners through halo_backward.
// ALiBi applies (it depends on i - j only); document ids go through the ring schedule.
#pragma once
#include "attn/flash.h"
#include "dist/comm.h"
#include "dist/layout.h"

namespace lctx::dist {

// True when window_attention serves `opts` on `layout` (ring level: layout.ring_size() > 1).
bool window_by_halo(const Layout& layout, const attn::FlashOptions& opts);

// As ring_attention_forward / _backward (same inputs, outputs and dtypes; `ring` is the ring
// communicator of `layout`); the caller checks window_by_halo first.
attn::FlashOutput window_attention_forward(Comm& ring, const Layout& layout, const Tensor& q, const Tensor& k,
                                           const Tensor& v, const attn::FlashOptions& opts, Stream s = {});
attn::FlashGrads window_attention_backward(Comm& ring, const Layout& layout, const Tensor& q, const Tensor& k,
                                           const Tensor& v, const Tensor& o, const Tensor& lse, const Tensor& dout,
                                           const attn::FlashOptions& opts, attn::OutputDType grad_dtype,
                                           Stream s = {});

}  // namespace lctx::dist
