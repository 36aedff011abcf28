// Sparse Transformer strided attention, causal: query i sees the window of keys i - w < j <= i
// plus every earlier key with (i - j) mod s == 0 -- the pattern of strided_block_mask, computed
// another way (and, with n_global, the window plus global keys; see below). Through a block mask
// it is slow at long lengths: every key tile holds strided keys, so about half of all tiles run
// masked (FlexAttention: ~16 TFLOP/s on the visible pairs at 64k, window 1024, stride 64). Here
// it is two dense flash calls and an exact merge:
//   window part:  flash, causal, window_left = w - 1 (the existing band fast path);
//   strided part: the keys j = i (mod s) with j <= i - w. Position p = t s + r (residue r) of a
//     contiguous [B, S, H, D] tensor is element (b, t, r H + h) of the same memory viewed as
//     [B, S / s, s H, D], so each residue's subsequence is a head of its own: no gather copy.
//     In it query t sees keys t' <= t - c, c = ceil(w / s), exactly the strided keys the window
//     does not cover (no pair counted twice): flash, causal, k_offset = c, over s H heads of
//     S / s positions, ~S^2 / (2 s) pairs per head at dense tensor-core speed;
//   merge: the two (o, lse) by their log-sum-exp in fp32 (strided_attention.cu / the CPU loop);
//     the window part comes in the input dtype (cuDNN writes it so: no fp32 copy of the
//     largest output), the far part in fp32.
// The same split serves the causal local + global pattern (window plus the first g positions,
// attention sinks; global_block_mask united with window_block_mask): n_global = g instead of
// the stride, the far part is flash of every query over keys [0, g) with causal and
// k_offset = w (the global keys j <= i - w the window does not cover), S x g pairs. Both parts
// run under the automatic backend (the window part on cuDNN where it can), which the lctx
// kernels' block-mask path cannot use.
// Query ranges (sequence parallelism): q holds the Sq queries at positions [q_offset,
// q_offset + Sq) and k/v the keys [0, q_offset + Sq) -- every earlier key, since the strided
// keys reach back to the start. The queries are padded in front by q_offset mod s zero rows (and
// at the end to a multiple of s), so that the padded block starts on a residue boundary and the
// residue views of q and k line up, whatever q_offset is; both flash calls take the block's
// position as q_offset. A rank of a sharded sequence calls this once per run of consecutive
// positions it holds (mixers/strided.h gathers the keys).
// Backward: each part's flash backward with the merged o and lse (the global softmax). Strided:
// both parts summed into fp32 gradients. Global: the window part writes the gradients directly
// (input dtype, as cuDNN does), the global part's fp32 dQ (and dK/dV of the g rows) are added
// in once (the queries that see every global key through flash_few_keys.h: the kernels' one
// block per key tile would leave the GPU idle).
// Padded rows (front and back) have lse +inf and dout 0: P = 0, no gradient, on every backend;
// the padded keys lie after every real query: never seen. Memory O(Sk) (fp32 partial outputs
// and gradients).
// Layout, dtypes and devices as flash.h (CPU f32/f64, CUDA bf16/f16 with head_dim 64/128).
#pragma once
#include <cstdint>

#include "attn/flash.h"

namespace lctx::attn {

struct StridedOptions {
  int64_t window = 0;          // w >= 1: keys i - w < j <= i (w <= Sk, the keys given)
  int64_t stride = 0;          // s >= 1: plus keys j <= i - w with (i - j) mod s == 0
  int64_t n_global = 0;        // g >= 1 (instead of a stride): plus keys j < g, j <= i - w
  int64_t q_offset = 0;        // position of query row 0; k/v hold positions [0, q_offset + Sq)
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(head_dim)
  AttnBackend backend = AttnBackend::automatic;  // of both flash calls
};

// q [B, Sq, Hq, D], k/v [B, q_offset + Sq, Hkv, D] (strided views allowed).
// o [B, Sq, Hq, D] in q's dtype, lse [B, Hq, Sq] f32 (f64 for f64 inputs).
FlashOutput strided_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const StridedOptions& opts,
                                      Stream s = {});
// Gradients in q's dtype (dk/dv [B, q_offset + Sq, Hkv, D]), from the forward's o and lse.
FlashGrads strided_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                      const Tensor& lse, const Tensor& dout, const StridedOptions& opts,
                                      Stream s = {});

namespace detail {
// CUDA side of the merge and of the backward's lse layout (the CPU loops are in
// strided_attention.cpp). ow [B, S', H, D] in o's dtype with lw [B, H, S'] (window part) and
// os [B, S', H, D] with ls [B, s H, S'/s] (strided part, residue-major heads) in fp32, all
// contiguous, merged into o [B, S, H, D] (bf16/f16) and lse [B, H, S] f32: row i of o is
// padded row front + i (front + S <= S').
#ifdef LCTX_HAVE_CUDA
void strided_merge_cuda(const Tensor& ow, const Tensor& lw, const Tensor& os, const Tensor& ls, int64_t stride,
                        int64_t front, Tensor& o, Tensor& lse, Stream s);
// ls [B, s H, S'/s] from lse [B, H, S] (contiguous): padded row p is row p - front of lse,
// +inf outside [0, S) (P = 0).
void strided_lse_gather_cuda(const Tensor& lse, int64_t stride, int64_t front, Tensor& ls, Stream s);
#endif
}  // namespace detail

}  // namespace lctx::attn
