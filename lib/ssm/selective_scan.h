// Selective scan (Mamba-1): a diagonal linear recurrence whose step and input/output maps
// depend on the token. Per batch b, channel d (of d_inner D) and state n (of d_state N):
//   dt_t = softplus(dt_raw_t + dt_bias)              (or dt_raw_t + dt_bias with Softplus::off)
//   h_t  = exp(dt_t A[d, n]) h_{t-1} + dt_t B_t[g, n] x_t,   h_0 = state0
//   y_t  = sum_n C_t[g, n] h_t + D[d] x_t,   out_t = y_t * silu(z_t)  (when z is given)
// B and C are shared by the D / G channels of a group: channel d reads group d / (D / G)
// (G = 1 is Mamba-1; any G dividing D). A is passed as it is used (the Mamba mixer gives
// -exp(A_log)). Calls take an initial state and return the final one, with gradients of both,
// so sequences chain in pieces and shard through dist/state_scan.h (Affine per segment:
// a = exp(A * sum dt) elementwise, e = the segment's final state from zeros; n = D * N, m = 1).
// The scan runs in wide_dtype(x) (f32; f64 for f64 inputs), in chunks of `chunk` tokens as
// the CUDA kernel will: per chunk, dt and the gate are formed once, then each state runs its
// chunk from the carried prefix. The backward recomputes (saves nothing from the forward): a
// first pass keeps each chunk's entry state, then chunks are walked in reverse, each
// recomputing its states from its entry state. Contiguous tensors. CPU: f32/f64, d_state in
// 1..kMaxStateCpu. CUDA (selective_scan.cu): bf16/f16/f32 I/O with the scan in fp32, d_state
// in 1..kMaxStateCuda; the kernels use their own chunk length (16 tokens) and keep each
// chunk's entry state in scratch for the backward (B * S/16 * D * N floats).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace lctx::ssm {

enum class Softplus { on, off };  // off: dt = dt_raw + dt_bias as given (already positive)

struct ScanOptions {
  Softplus softplus = Softplus::on;
  int64_t chunk = 128;  // tokens per chunk (>= 1; need not divide S)
};

// x, dt, B, C, z share one dtype; A, D, dt_bias and state0 are in its wide dtype.
struct ScanInputs {
  Tensor x;        // [B, S, D]
  Tensor dt;       // [B, S, D], before dt_bias and softplus
  Tensor A;        // [D, N]
  Tensor B;        // [B, S, G, N]
  Tensor C;        // [B, S, G, N]
  Tensor D;        // [D]; undefined: no skip term
  Tensor z;        // [B, S, D]; undefined: no gate
  Tensor dt_bias;  // [D]; undefined: zeros
  Tensor state0;   // [B, D, N]; undefined: zeros
};

struct ScanOutput {
  Tensor y;            // [B, S, D], dtype of x (gated when z is given)
  Tensor final_state;  // [B, D, N], wide dtype
};

// Gradients of every input; those of undefined optional inputs (D, z, dt_bias) are undefined,
// d_state0 is defined always (the gradient of zeros when state0 was undefined).
struct ScanGrads {
  Tensor dx, d_dt, dB, dC, dz;         // like x, dt (of dt_raw, before bias and softplus), B, C, z
  Tensor dA, dD, d_dt_bias, d_state0;  // like A, D, dt_bias, state0 (wide dtype)
};

ScanOutput selective_scan_forward(const ScanInputs& in, const ScanOptions& opts, Stream s = {});

// Gradients given dL/dy (`dy`, like y) and dL/dfinal_state (`d_final_state`, like
// final_state; undefined: zeros). New tensors are returned.
ScanGrads selective_scan_backward(const ScanInputs& in, const Tensor& dy, const Tensor& d_final_state,
                                  const ScanOptions& opts, Stream s = {});

}  // namespace lctx::ssm
