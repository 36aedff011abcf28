// Linear attention: softmax replaced by a kernel phi(q) . phi(k), so causal attention is a
// recurrence over a fixed-size state, O(S) instead of O(S^2). Per state head:
//   S_t = lambda_t S_{t-1} + phi(k_t) v_t^T,  o_t = phi(q_t)^T S_t        (S [Dk, Dv], S_0 = state0)
// normalised: o_t /= phi(q_t)^T z_t + eps, z_t = lambda_t z_{t-1} + phi(k_t). lambda_t =
// exp(log_decay) is 1, a constant per head (retention, Lightning), a learned per-head
// parameter, or a per-token scalar gate (Mamba-2 SSD: q = C, k = B, v = dt x, log_decay =
// dt A). The non-causal form gives every query S = state0 + sum_j phi(k_j) v_j^T. Calls take
// an initial state and return the final one, with gradients of both, so they chain: a sequence
// in pieces, or sequence parallelism through dist/state_scan.h (Affine e = the final state of
// a segment run from zeros, a = exp(sum of its log-decays) per head).
// Inputs are features: apply a feature map (feature_map.h) to q and k first. Layout [B, S,
// heads, dim]. State heads H = max(Hq, Hk, Hv), each of which divides H; state head h reads q
// head h / (H / Hq) (likewise k, v): GQA (Hk = Hv < Hq) and Mamba-2 groups (Hq = Hk < Hv) are
// plain calls, o has H heads, dq/dk/dv sum over the state heads sharing an input head.
// Normalised, the state is [Dk, Dv + 1] with z in column Dv: one tensor carries (S, z).
// Causal calls run the chunked algorithm (any chunk size): a decay-masked quadratic form inside
// each chunk, e^{A_i - A_j} from cumulative log-decays and formed only for i >= j (no ratio
// exceeds 1), and a state pass between chunks; the backward recomputes the chunk states and
// needs no forward output. CPU: f32/f64, Dk and Dv in 1..1024; states, log-decays and their
// gradients in wide_dtype(q). CUDA (linear_attn.cu): bf16/f16/f32 inputs with fp32 states and
// accumulation, Dk in 1..256, Dv in 1..1024; the sequence is split for parallelism and the
// chunk length is the kernel's own (opts.chunk applies to the CPU).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace lctx::linear_attn {

enum class Mask { causal, none };  // none: the non-causal form (no decay)
// none: lambda = 1. fixed / learned: log_decay [H], one constant per head (learned also returns
// its gradient). data: log_decay [B, S, H], one per token and head, with its gradient.
enum class Decay { none, fixed, learned, data };
enum class Normalize { off, on };

struct LinearAttnOptions {
  Mask mask = Mask::causal;
  Decay decay = Decay::none;
  Normalize normalize = Normalize::off;
  double eps = 1e-6;   // normalised: o = num / (phi(q)^T z + eps); eps >= 0
  int64_t chunk = 64;  // causal: tokens per chunk (>= 1; need not divide S)
};

struct LinearAttnInputs {
  Tensor q;          // phi(q) [B, S, Hq, Dk]; q, k, v share one dtype; head_dim contiguous
  Tensor k;          // phi(k) [B, S, Hk, Dk]
  Tensor v;          // [B, S, Hv, Dv]
  Tensor log_decay;  // log lambda <= 0, finite, wide dtype: [H] (fixed, learned), [B, S, H]
                     // (data; head stride 1); undefined with Decay::none
  Tensor state0;     // [B, H, Dk, Dv (+1 normalised)] contiguous, wide dtype; undefined: zeros
};

struct LinearAttnOutput {
  Tensor o;            // [B, S, H, Dv], dtype of q
  Tensor final_state;  // like state0
};

struct LinearAttnGrads {
  Tensor dq, dk, dv;   // like q, k, v (contiguous)
  Tensor d_state0;     // like state0 (also when state0 was undefined: the gradient of zeros)
  Tensor d_log_decay;  // like log_decay for Decay::learned and Decay::data, else undefined
};

LinearAttnOutput linear_attn_forward(const LinearAttnInputs& in, const LinearAttnOptions& opts, Stream s = {});

// Gradients of L given dL/do (`dout`, like o) and dL/dfinal_state (`d_final_state`, like
// final_state; undefined: zeros). New tensors are returned.
LinearAttnGrads linear_attn_backward(const LinearAttnInputs& in, const Tensor& dout, const Tensor& d_final_state,
                                     const LinearAttnOptions& opts, Stream s = {});

}  // namespace lctx::linear_attn
