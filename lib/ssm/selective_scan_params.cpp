// ScanParams from the tensors and options of a selective_scan_forward / _backward call: every
// shape, dtype, device and option check the public API promises (selective_scan.h), the
// outputs and gradients it allocates, and the pointers the implementations read.
#include "ssm/selective_scan_params.h"

#include "ssm/operand.h"
#include "ssm/selective_scan.h"

namespace lctx::ssm {

namespace {

using detail::alloc;
using detail::operand;
using detail::optional_operand;

// x's device and dtype, and d_state, are ones an implementation runs: the CPU f32/f64 with
// d_state up to kMaxStateCpu, CUDA bf16/f16/f32 with d_state up to kMaxStateCuda.
void check_device(const char* op, const Tensor& x, const Tensor& A) {
  const int64_t n = A.size(1);
  if (x.device().is_cpu()) {
    LCTX_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, op,
               ": the CPU implementation supports f32 and f64, got x ", x.str());
    LCTX_CHECK(n >= 1 && n <= kMaxStateCpu, op, ": the CPU implementation supports d_state 1..", kMaxStateCpu,
               ", got A ", A.str());
    return;
  }
#ifdef LCTX_HAVE_CUDA
  LCTX_CHECK(x.dtype() == DType::bf16 || x.dtype() == DType::f16 || x.dtype() == DType::f32, op,
             ": CUDA supports bf16, f16 and f32 inputs, got x ", x.str());
  LCTX_CHECK(n >= 1 && n <= kMaxStateCuda, op, ": CUDA supports d_state 1..", kMaxStateCuda, ", got A ", A.str());
#else
  LCTX_FAIL(op, ": x ", x.str(), " is on a GPU but lctx was built without CUDA");
#endif
}

// The params of the inputs and options, shared by forward and backward.
ScanParams make_params(const char* op, const ScanInputs& in, const ScanOptions& opts) {
  const Tensor& x = in.x;
  LCTX_CHECK(x.defined() && x.dim() == 3, op, ": x ", x.defined() ? x.str() : "(undefined)", " must be [B, S, D]");
  LCTX_CHECK(in.A.defined() && in.A.dim() == 2, op, ": A ", in.A.defined() ? in.A.str() : "(undefined)",
             " must be [D, N]");
  check_device(op, x, in.A);
  LCTX_CHECK(in.B.defined() && in.B.dim() == 4, op, ": B ", in.B.defined() ? in.B.str() : "(undefined)",
             " must be [B, S, G, N]");
  ScanParams p;
  p.batch = x.size(0);
  p.seqlen = x.size(1);
  p.dim = static_cast<int>(x.size(2));
  p.dstate = static_cast<int>(in.A.size(1));
  p.groups = static_cast<int>(in.B.size(2));
  p.dtype = x.dtype();
  p.wide = wide_dtype(x.dtype());
  LCTX_CHECK(p.groups >= 1 && p.dim % p.groups == 0, op, ": the groups of B ", in.B.str(),
             " must divide d_inner D = ", p.dim, " (x ", x.str(), ")");
  const Shape tokens = {p.batch, p.seqlen, p.dim}, bc = {p.batch, p.seqlen, p.groups, p.dstate};
  p.x = operand(op, "x", x, tokens, p.dtype, x);
  p.dt = operand(op, "dt", in.dt, tokens, p.dtype, x);
  p.A = operand(op, "A", in.A, {p.dim, p.dstate}, p.wide, x);
  p.B = operand(op, "B", in.B, bc, p.dtype, x);
  p.C = operand(op, "C", in.C, bc, p.dtype, x);
  p.D = optional_operand(op, "D", in.D, {p.dim}, p.wide, x);
  p.z = optional_operand(op, "z", in.z, tokens, p.dtype, x);
  p.dt_bias = optional_operand(op, "dt_bias", in.dt_bias, {p.dim}, p.wide, x);
  p.state0 = optional_operand(op, "state0", in.state0, {p.batch, p.dim, p.dstate}, p.wide, x);
  p.softplus = opts.softplus == Softplus::on;
  LCTX_CHECK(opts.chunk >= 1, op, ": chunk ", opts.chunk, " must be >= 1");
  p.chunk = opts.chunk;
  return p;
}

}  // namespace

ScanParams selective_scan_forward_params(const char* op, const ScanInputs& in, const ScanOptions& opts,
                                         ScanOutput* out) {
  ScanParams p = make_params(op, in, opts);
  p.y = alloc(out->y, in.x.shape(), p.dtype, in.x);
  p.final_state = alloc(out->final_state, {p.batch, p.dim, p.dstate}, p.wide, in.x);
  return p;
}

ScanParams selective_scan_backward_params(const char* op, const ScanInputs& in, const Tensor& dy,
                                          const Tensor& d_final_state, const ScanOptions& opts, ScanGrads* g) {
  ScanParams p = make_params(op, in, opts);
  const Tensor& x = in.x;
  p.dy = operand(op, "dy", dy, x.shape(), p.dtype, x);
  p.d_final_state = optional_operand(op, "d_final_state", d_final_state, {p.batch, p.dim, p.dstate}, p.wide, x);
  p.dx = alloc(g->dx, x.shape(), p.dtype, x);
  p.d_dt = alloc(g->d_dt, x.shape(), p.dtype, x);
  p.dA = alloc(g->dA, in.A.shape(), p.wide, x);
  p.dB = alloc(g->dB, in.B.shape(), p.dtype, x);
  p.dC = alloc(g->dC, in.C.shape(), p.dtype, x);
  p.d_state0 = alloc(g->d_state0, {p.batch, p.dim, p.dstate}, p.wide, x);
  if (p.D) p.dD = alloc(g->dD, {p.dim}, p.wide, x);
  if (p.z) p.dz = alloc(g->dz, x.shape(), p.dtype, x);
  if (p.dt_bias) p.d_dt_bias = alloc(g->d_dt_bias, {p.dim}, p.wide, x);
  return p;
}

}  // namespace lctx::ssm
