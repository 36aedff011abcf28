// ConvParams from the tensors and options of a causal_conv1d_forward / _backward call: the
// checks causal_conv1d.h promises, the outputs it allocates and the pointers the
// implementations read.
#include "ssm/causal_conv1d_params.h"

#include "ssm/causal_conv1d.h"
#include "ssm/operand.h"

namespace lctx::ssm {

namespace {

using detail::alloc;
using detail::operand;
using detail::optional_operand;

// x's device and dtype are ones an implementation runs: the CPU f32/f64, CUDA bf16/f16/f32.
void check_device(const char* op, const Tensor& x) {
  if (x.device().is_cpu()) {
    LCTX_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, op,
               ": the CPU implementation supports f32 and f64, got x ", x.str());
    return;
  }
#ifdef LCTX_HAVE_CUDA
  LCTX_CHECK(x.dtype() == DType::bf16 || x.dtype() == DType::f16 || x.dtype() == DType::f32, op,
             ": CUDA supports bf16, f16 and f32 inputs, got x ", x.str());
#else
  LCTX_FAIL(op, ": x ", x.str(), " is on a GPU but lctx was built without CUDA");
#endif
}

ConvParams make_params(const char* op, const ConvInputs& in, const ConvOptions& opts) {
  const Tensor& x = in.x;
  LCTX_CHECK(x.defined() && x.dim() == 3, op, ": x ", x.defined() ? x.str() : "(undefined)", " must be [B, S, C]");
  check_device(op, x);
  const Tensor& w = in.weight;
  LCTX_CHECK(w.defined() && w.dim() == 2, op, ": weight ", w.defined() ? w.str() : "(undefined)", " must be [C, W]");
  LCTX_CHECK(w.size(1) >= 1 && w.size(1) <= kMaxConvWidth, op, ": the width W of weight ", w.str(), " must be in 1..",
             kMaxConvWidth);
  ConvParams p;
  p.batch = x.size(0);
  p.seqlen = x.size(1);
  p.channels = static_cast<int>(x.size(2));
  p.width = static_cast<int>(w.size(1));
  p.dtype = x.dtype();
  p.wide = wide_dtype(x.dtype());
  p.silu = opts.activation == Activation::silu;
  p.x = x.raw();
  p.weight = operand(op, "weight", w, {p.channels, p.width}, p.wide, x);
  p.bias = optional_operand(op, "bias", in.bias, {p.channels}, p.wide, x);
  p.history = optional_operand(op, "history", in.history, {p.batch, p.width - 1, p.channels}, p.dtype, x);
  check_contiguous(op, "x", x);
  return p;
}

}  // namespace

ConvParams causal_conv1d_forward_params(const char* op, const ConvInputs& in, const ConvOptions& opts, Tensor* y) {
  ConvParams p = make_params(op, in, opts);
  p.y = alloc(*y, in.x.shape(), p.dtype, in.x);
  return p;
}

ConvParams causal_conv1d_backward_params(const char* op, const ConvInputs& in, const Tensor& dy,
                                         const ConvOptions& opts, ConvGrads* g) {
  ConvParams p = make_params(op, in, opts);
  const Tensor& x = in.x;
  p.dy = operand(op, "dy", dy, x.shape(), p.dtype, x);
  p.dx = alloc(g->dx, x.shape(), p.dtype, x);
  p.dweight = alloc(g->dweight, in.weight.shape(), p.wide, x);
  if (p.bias) p.dbias = alloc(g->dbias, {p.channels}, p.wide, x);
  p.d_history = alloc(g->d_history, {p.batch, p.width - 1, p.channels}, p.dtype, x);
  return p;
}

}  // namespace lctx::ssm
