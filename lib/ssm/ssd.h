// Mamba-2's state-space duality (SSD) layer core: a selective scan whose decay is one scalar
// per head and token, so it is chunked linear attention with a data-dependent decay and runs
// on linear_attn (linear_attn.h) rather than a second scan. Per batch, head h (of H, head dim
// P) and group g = h / (H / G) (B and C shared by the H / G heads of a group):
//   dt_t = softplus(dt_raw_t + dt_bias[h])            (or dt_raw_t + dt_bias[h], Softplus::off)
//   S_t  = exp(dt_t A[h]) S_{t-1} + B_t (dt_t x_t)^T   (S [N, P], S_0 = state0)
//   y_t  = S_t^T C_t + D[h] x_t
// i.e. linear attention with q = C, k = B, v = dt x, log_decay = dt A, plus the D skip; the
// gradients of q, k, v, log_decay map back to dC, dB, dx, d_dt, dA. The state is k-major like
// linear attention's, [B, H, N, P] (mamba_ssm's is [B, H, P, N]), and chains and shards the
// same way (dist/state_scan.h: a = exp(A * sum dt) per head). The gated RMSNorm of a Mamba-2
// layer is not part of it. CPU: f32/f64; CUDA: f32/bf16/f16 (the maps in fp32, ssd.cu; the scan
// is linear_attn's CUDA kernel); contiguous tensors, A, D, dt_bias and the state in wide_dtype(x).
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "ssm/selective_scan.h"  // Softplus

namespace lctx::ssm {

struct SsdOptions {
  Softplus softplus = Softplus::on;
  int64_t chunk = 64;  // linear_attn's chunk length
};

// x, dt, B, C share one dtype; A, D, dt_bias and state0 are in its wide dtype.
struct SsdInputs {
  Tensor x;        // [B, S, H, P]
  Tensor dt;       // [B, S, H], before dt_bias and softplus
  Tensor A;        // [H] (negative: the decay per unit of dt)
  Tensor B;        // [B, S, G, N], G dividing H
  Tensor C;        // [B, S, G, N]
  Tensor D;        // [H]; undefined: no skip term
  Tensor dt_bias;  // [H]; undefined: zeros
  Tensor state0;   // [B, H, N, P]; undefined: zeros
};

struct SsdOutput {
  Tensor y;            // [B, S, H, P], dtype of x
  Tensor final_state;  // [B, H, N, P], wide dtype
};

// Gradients of every input; dD and d_dt_bias are undefined when D and dt_bias are, d_state0 is
// always defined.
struct SsdGrads {
  Tensor dx, d_dt, dB, dC;             // like x, dt (of dt_raw), B, C
  Tensor dA, dD, d_dt_bias, d_state0;  // like A, D, dt_bias, state0
};

SsdOutput ssd_forward(const SsdInputs& in, const SsdOptions& opts, Stream s = {});

// Gradients given dL/dy (`dy`, like y) and dL/dfinal_state (undefined: zeros).
SsdGrads ssd_backward(const SsdInputs& in, const Tensor& dy, const Tensor& d_final_state, const SsdOptions& opts,
                      Stream s = {});

namespace detail {
// The CUDA halves of the elementwise maps (ssd.cu); operands validated, outputs allocated.
// dt = softplus(dt_raw + dt_bias) (or not), raw = dt_raw + dt_bias, v = dt x, log_decay = dt A.
void ssd_map_inputs_cuda(Tensor& dt, Tensor& raw, Tensor& v, Tensor& log_decay, const SsdInputs& in, Softplus sp,
                         Stream s);
// y += D x.
void ssd_add_skip_cuda(Tensor& y, const Tensor& x, const Tensor& D, Stream s);
// g.dx, g.d_dt, g.dA, g.dD, g.d_dt_bias (allocated; the sums zeroed) from linear_attn's dv and
// d_log_decay, dy and the forward's dt and raw.
void ssd_map_grads_cuda(SsdGrads& g, const SsdInputs& in, const Tensor& dy, const Tensor& dv, const Tensor& d_log_decay,
                        const Tensor& dt, const Tensor& raw, Softplus sp, Stream s);
}  // namespace detail

}  // namespace lctx::ssm
