// Flash backward of a call in which every query sees every key of a short key set (attention
// sinks, global or memory tokens: a few dozen rows against a whole sequence of queries). The
// kernels' backward runs one block per 128-key tile and KV head, so such a call is one long
// block per head that walks every query tile while the rest of the GPU idles. Here the query
// rows are folded into the batch, chunks of L rows with K/V repeated per chunk (enough blocks
// to fill the GPU), flash_backward runs once, and the chunks' dK/dV are summed. Exact: the
// same pairs and the same sums in another order. Any device; on the CPU it is the same
// reference. Not yet timed on its own on a GPU.
#pragma once
#include "attn/flash.h"

namespace lctx::attn {

// q, o, dout [B, Sq, Hq, D], k, v [B, Sk, Hkv, D], lse [B, Hq, Sq] of the softmax the call is
// part of; opts: softmax scale and backend only (every pair visible: no mask, window,
// documents, ALiBi, block mask or offsets). Adds dq, dk, dv into `into` (wide dtype: f32, f64
// for f64 inputs).
void flash_backward_few_keys(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                    const Tensor& lse, const Tensor& dout, const FlashOptions& opts,
                                    const FlashGrads& into, Stream s = {});

}  // namespace lctx::attn
