// SwiGLU on a packed input: in [..., 2F] holds gate = in[..., :F] and up = in[..., F:] (the
// output of one fused gate/up linear), out [..., F] = silu(gate) * up, silu(g) = g sigmoid(g).
// Backward writes din [..., 2F] (gate half, then up half; overwritten), in in's dtype.
#pragma once
#include "core/tensor.h"

namespace lctx::ops {

void swiglu_forward(Tensor& out, const Tensor& in, Stream s = {});

void swiglu_backward(Tensor& din, const Tensor& dout, const Tensor& in, Stream s = {});

}  // namespace lctx::ops
