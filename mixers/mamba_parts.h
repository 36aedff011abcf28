// The pieces the Mamba kinds (`mamba`, `mamba2`) share, so each kind's forward and backward read
// as the layer's math: the Mamba-paper inits, projections onto row blocks of one weight (the
// parts of in_proj / x_proj) and a segment's decay product for dist/recurrent_sp.h. Their conv
// is mixers/segment_conv.h.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dist/layout.h"
#include "mixers/param.h"

namespace lctx::dist {
class Comm;
}  // namespace lctx::dist

namespace lctx::mixers::mamba {

// dt = exp(U(log 1e-3, log 1e-1)) (at least 1e-4), stored as its inverse softplus (dt_bias).
void init_dt_bias(Tensor& master, const InitContext& ctx);

// x W[rows]^T for W's rows [begin, begin + n).
Tensor project(const Tensor& x, const Param& w, int64_t begin, int64_t n);
// Its backward: overwrites the gradient of those rows of W and adds dL/dx into dx, a wide
// accumulator (wide_zeros_like(x): Tensor::add_from's destinations are f32/f64); dy in x's dtype.
void project_backward(Tensor& dx, const Param& w, int64_t begin, int64_t n, const Tensor& dy, const Tensor& x);

using dist::rows;  // the rows of t [B, L, ...] of one segment (a strided view)

// A = -exp(A_log) in wide_dtype(A_log), and dL/dA_log = dL/dA * A in `grad_dtype`
// (ops/negative_exp.h).
Tensor negative_exp(const Tensor& a_log);
Tensor a_log_grad(const Tensor& dA, const Tensor& A, DType grad_dtype);

// a [B, K * M] of one segment for A [K, M] (or [K]: M = 1) and dt_raw [B, L, K]:
// a[b, k, m] = exp(A[k, m] * sum over the segment's tokens of softplus(dt_raw + dt_bias[k])),
// in wide_dtype(dt_raw); dt_bias and A in that dtype (ssm/segment_decay.h).
Tensor segment_decay(const Tensor& dt_raw, const Tensor& dt_bias, const Tensor& A, const dist::Segment& seg);

// The gradients a layer's per-segment scan backward calls add into (whole local sequence: the
// scan's inputs x, dt, B, C and gate z, its parameters A, D, dt_bias; all wide accumulators),
// and the gradient of the scan's outputs they read (in y's dtype). Works for lib/ssm's
// ScanGrads (selective scan) and SsdGrads (no z).
struct ScanGradSums {
  Tensor dx, d_dt, dB, dC, dz;  // like the layer's x, dt, B, C, z (dz undefined without a gate)
  Tensor dA, dD, d_dt_bias;
  Tensor dy;

  // Adds one segment's kernel gradients `r` (its dB, dC contiguous, viewed as this layer's).
  template <class KernelGrads>
  void add(const KernelGrads& r, const dist::Segment& seg) {
    rows(dx, seg).add_from(r.dx.view(rows(dx, seg).shape()));
    rows(d_dt, seg).add_from(r.d_dt);
    rows(dB, seg).add_from(r.dB.view(rows(dB, seg).shape()));
    rows(dC, seg).add_from(r.dC.view(rows(dC, seg).shape()));
    if constexpr (requires { r.dz; }) rows(dz, seg).add_from(r.dz);
    dA.add_from(r.dA);
    dD.add_from(r.dD);
    d_dt_bias.add_from(r.d_dt_bias);
  }
};

// Zeros of t's shape in wide_dtype(t) on its device, an accumulator for add_from (undefined
// where t is).
Tensor wide_zeros_like(const Tensor& t);

}  // namespace lctx::mixers::mamba
