// The decay product of a piece of a recurrence (dist/recurrent_sp.h's SegmentKernel::decay):
// what multiplies the piece's initial state in its final state, for diagonal decays
// exp(dt A) per token:
//   a[b, k * M + m] = exp(A[k, m] * sum over t of f(dt[b, t, k] + dt_bias[k])),
// f = softplus (Softplus::on: Mamba's dt) or the identity (off: dt given as is). A [K, M] (Mamba-1:
// a rate per channel and state) or [K] (M = 1: Mamba-2's per head; linear attention with dt the
// log-decays and A = 1, or dt = the length and A = a per-head log-decay).
// dt [B, T, K] in any float dtype with a contiguous last dimension (a slice of the sequence);
// dt_bias (optional) and A in wide_dtype(dt); a [B, K * M] in wide_dtype(dt), the sum over t
// in fp32 (CUDA) or f64 (CPU).
#pragma once
#include "core/tensor.h"
#include "ssm/selective_scan.h"  // Softplus

namespace lctx::ssm {

Tensor segment_decay(const Tensor& dt, const Tensor& dt_bias, const Tensor& A, Softplus softplus, Stream s = {});

namespace detail {
// The CUDA half (segment_decay.cu): validated operands, a allocated.
void segment_decay_cuda(Tensor& a, const Tensor& dt, const Tensor& dt_bias, const Tensor& A, Softplus softplus,
                        Stream s);
}  // namespace detail

}  // namespace lctx::ssm
