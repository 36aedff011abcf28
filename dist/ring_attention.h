// Ring attention (context parallelism): exact attention over a sequence sharded across the
// ranks of a ring communicator, following the Layout's ring schedule.
//
// Forward: each step starts the exchange of the next K/V block (K and V in one preallocated
// buffer, double-buffered; on GPUs the compute stream waits on the communicator's events,
// never the host) while attn::flash_forward computes the local blocks at their global
// positions with fp32 partial outputs, merged exactly in fp32 (merge_attention) and cast
// once at the end. Backward: a remote block's fp32 dK/dV accumulator starts at the first rank
// that uses it, travels with its K/V and reaches the owner one hop after the last step (a
// phase of one hop, e.g. 2 ranks, sends one rank's gradient home in the input dtype: there is
// no sum over ranks to keep in fp32); the local block runs last, into the owner's dK/dV,
// overlapping that return; dQ stays local; every block uses the global o and lse.
// A causal sliding window no longer than a segment (no document ids) is not a ring at all:
// RingMode::ring serves it by halo exchange (window_attention.h), the K/V rows the window
// reaches and no more.
// RingMode::all_gather gathers all K/V once (and reduce-scatters dK/dV): more memory, fewer
// latency-bound steps. Both modes give the same blocks in the same order.
//
// Inputs are this rank's tokens in layout order (Layout::shard): q [B, L, Hq, D], k/v
// [B, L, Hkv, D] with L = layout.ring_local_len(). `opts` describes the global problem (mask,
// window, ALiBi, scale); q_offset/k_offset must be 0 (positions come from the layout), and
// q_doc_ids/k_doc_ids, when given, are this rank's document ids [B, L] (same tokens); with
// opts.documents (their global host description) blocks that share no document are skipped
// and the ring needs only the hops that documents reach (ring_schedule.h).
#pragma once
#include "attn/flash.h"
#include "dist/comm.h"
#include "dist/layout.h"

namespace lctx::dist {

enum class RingMode { ring, all_gather };
std::string_view ring_mode_name(RingMode m);

// o [B, L, Hq, D] in q's dtype (fp32/f64 with opts.out_dtype = OutputDType::f32), lse
// [B, Hq, L] (f32, f64 for f64 inputs): the rank's rows of the global result.
attn::FlashOutput ring_attention_forward(Comm& ring, const Layout& layout, const Tensor& q, const Tensor& k,
                                         const Tensor& v, const attn::FlashOptions& opts,
                                         RingMode mode = RingMode::ring, Stream s = {});

// Gradients of this rank's q, k, v given the global o and lse of its rows (from the forward)
// and dout; in q's dtype, or in the wide accumulation dtype with OutputDType::f32.
attn::FlashGrads ring_attention_backward(Comm& ring, const Layout& layout, const Tensor& q, const Tensor& k,
                                         const Tensor& v, const Tensor& o, const Tensor& lse, const Tensor& dout,
                                         const attn::FlashOptions& opts, RingMode mode = RingMode::ring,
                                         attn::OutputDType grad_dtype = attn::OutputDType::input, Stream s = {});

}  // namespace lctx::dist
