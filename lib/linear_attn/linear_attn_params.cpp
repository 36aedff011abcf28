// LinearAttnParams from the tensors and options of a linear_attn_forward / _backward call:
// every shape, dtype, device, layout and option check the public API promises
// (linear_attn.h), the outputs and gradients it allocates, and the pointers and strides the
// implementations read.
#include "linear_attn/linear_attn_params.h"

#include <algorithm>
#include <cmath>

#include "linear_attn/linear_attn.h"

namespace lctx::linear_attn {

namespace {

// An optional state-shaped tensor: undefined, or [B, H, Dk, cols] contiguous in the wide dtype.
const void* state_or_null(const char* op, const char* name, const Tensor& t, const LinearAttnParams& p,
                          const Tensor& q) {
  if (!t.defined()) return nullptr;
  check_shape(op, name, t, {p.batch, p.heads, p.dim_k, p.state_cols()});
  check_dtype(op, name, t, p.state_dtype);
  check_contiguous(op, name, t);
  check_same_device(op, {&q, &t});
  return t.raw();
}

// The params of q/k/v, log_decay, state0 and the options, shared by forward and backward.
LinearAttnParams make_params(const char* op, const LinearAttnInputs& in, const LinearAttnOptions& opts) {
  const Tensor &q = in.q, &k = in.k, &v = in.v;
  LCTX_CHECK(q.defined() && k.defined() && v.defined(), op, ": q, k and v must be defined");
  LCTX_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": q ", q.str(), ", k ", k.str(), ", v ", v.str(),
             " must be [B, S, heads, dim]");
  LinearAttnParams p;
  p.batch = q.size(0);
  p.seqlen = q.size(1);
  p.heads_q = static_cast<int>(q.size(2));
  p.heads_k = static_cast<int>(k.size(2));
  p.heads_v = static_cast<int>(v.size(2));
  p.dim_k = static_cast<int>(q.size(3));
  p.dim_v = static_cast<int>(v.size(3));
  p.heads = std::max({p.heads_q, p.heads_k, p.heads_v});
  check_bshd(op, "q", q, q.shape());
  check_bshd(op, "k", k, {p.batch, p.seqlen, p.heads_k, p.dim_k});
  check_bshd(op, "v", v, {p.batch, p.seqlen, p.heads_v, p.dim_v});
  LCTX_CHECK(p.heads_q > 0 && p.heads_k > 0 && p.heads_v > 0 && p.heads % p.heads_q == 0 && p.heads % p.heads_k == 0 &&
                 p.heads % p.heads_v == 0,
             op, ": the head counts of q ", q.str(), ", k ", k.str(), ", v ", v.str(),
             " must each divide the largest (the state heads, H = ", p.heads, ")");
  check_dtype(op, "k", k, q.dtype());
  check_dtype(op, "v", v, q.dtype());
  check_same_device(op, {&q, &k, &v});
  p.dtype = q.dtype();
  p.state_dtype = wide_dtype(q.dtype());
  p.q = q.raw();
  p.k = k.raw();
  p.v = v.raw();
  bshd_strides(p.q_stride, q);
  bshd_strides(p.k_stride, k);
  bshd_strides(p.v_stride, v);

  if (q.device().is_cpu()) {
    LCTX_CHECK(p.dtype == DType::f32 || p.dtype == DType::f64, op,
               ": the CPU implementation supports f32 and f64, got q ", q.str());
    LCTX_CHECK(p.dim_k >= 1 && p.dim_k <= kMaxHeadDimCpu && p.dim_v >= 1 && p.dim_v <= kMaxHeadDimCpu, op,
               ": the CPU implementation supports head dims 1..", kMaxHeadDimCpu, ", got Dk = ", p.dim_k, " (q ",
               q.str(), ") and Dv = ", p.dim_v, " (v ", v.str(), ")");
  } else {
    LCTX_CHECK(p.dtype == DType::bf16 || p.dtype == DType::f16 || p.dtype == DType::f32, op,
               ": the CUDA implementation supports bf16, f16 and f32, got q ", q.str());
    LCTX_CHECK(p.dim_k >= 1 && p.dim_k <= kMaxDimKCuda, op, ": the CUDA implementation supports Dk 1..",
               kMaxDimKCuda, " (the key tile lives in shared memory), got Dk = ", p.dim_k, " (q ", q.str(), ")");
    LCTX_CHECK(p.dim_v >= 1 && p.dim_v <= kMaxDimVCuda, op, ": the CUDA implementation supports Dv 1..",
               kMaxDimVCuda, ", got Dv = ", p.dim_v, " (v ", v.str(), ")");
  }

  p.causal = opts.mask == Mask::causal;
  p.normalize = opts.normalize == Normalize::on;
  LCTX_CHECK(opts.eps >= 0.0 && std::isfinite(opts.eps), op, ": eps ", opts.eps, " must be finite and >= 0");
  p.eps = opts.eps;
  LCTX_CHECK(opts.chunk >= 1, op, ": chunk ", opts.chunk, " must be >= 1");
  p.chunk = opts.chunk;

  const Tensor& g = in.log_decay;
  if (opts.decay == Decay::none) {
    LCTX_CHECK(!g.defined(), op, ": log_decay ", g.str(), " is given but the decay is none");
  } else {
    LCTX_CHECK(p.causal, op, ": the non-causal form has no decay (one state over the whole sequence)");
    LCTX_CHECK(g.defined(), op, ": log_decay is undefined but the decay is not none");
    check_dtype(op, "log_decay", g, p.state_dtype);
    check_same_device(op, {&q, &g});
    p.decay_per_token = opts.decay == Decay::data;
    if (p.decay_per_token) {
      check_shape(op, "log_decay", g, {p.batch, p.seqlen, p.heads});
      LCTX_CHECK(g.strides()[2] == 1 || p.heads == 1, op, ": log_decay ", g.str(), " needs head stride 1");
      p.decay_stride[0] = g.strides()[0];
      p.decay_stride[1] = g.strides()[1];
    } else {
      check_shape(op, "log_decay", g, {p.heads});
      check_contiguous(op, "log_decay", g);
    }
    p.log_decay = g.raw();
  }
  p.state0 = state_or_null(op, "state0", in.state0, p, q);
  return p;
}

}  // namespace

LinearAttnParams linear_attn_forward_params(const char* op, const LinearAttnInputs& in, const LinearAttnOptions& opts,
                                            LinearAttnOutput* out) {
  LinearAttnParams p = make_params(op, in, opts);
  const Device dev = in.q.device();
  out->o = Tensor::empty({p.batch, p.seqlen, p.heads, p.dim_v}, p.dtype, dev);
  out->final_state = Tensor::empty({p.batch, p.heads, p.dim_k, p.state_cols()}, p.state_dtype, dev);
  p.o = out->o.raw();
  bshd_strides(p.o_stride, out->o);
  p.final_state = out->final_state.raw();
  return p;
}

LinearAttnParams linear_attn_backward_params(const char* op, const LinearAttnInputs& in, const Tensor& dout,
                                             const Tensor& d_final_state, const LinearAttnOptions& opts,
                                             LinearAttnGrads* g) {
  LinearAttnParams p = make_params(op, in, opts);
  const Device dev = in.q.device();
  check_bshd(op, "dout", dout, {p.batch, p.seqlen, p.heads, p.dim_v});
  check_dtype(op, "dout", dout, p.dtype);
  check_same_device(op, {&in.q, &dout});
  p.dout = dout.raw();
  bshd_strides(p.dout_stride, dout);
  p.d_final_state = state_or_null(op, "d_final_state", d_final_state, p, in.q);

  g->dq = Tensor::empty(in.q.shape(), p.dtype, dev);
  g->dk = Tensor::empty(in.k.shape(), p.dtype, dev);
  g->dv = Tensor::empty(in.v.shape(), p.dtype, dev);
  g->d_state0 = Tensor::empty({p.batch, p.heads, p.dim_k, p.state_cols()}, p.state_dtype, dev);
  p.dq = g->dq.raw();
  p.dk = g->dk.raw();
  p.dv = g->dv.raw();
  p.d_state0 = g->d_state0.raw();
  if (opts.decay == Decay::learned || opts.decay == Decay::data) {
    g->d_log_decay = Tensor::empty(in.log_decay.shape(), p.state_dtype, dev);
    p.d_log_decay = g->d_log_decay.raw();
  }
  return p;
}

}  // namespace lctx::linear_attn
