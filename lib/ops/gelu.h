// GELU, tanh approximation: out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise
// on any contiguous shape. Backward: dx = dout * d out / dx (overwritten; x's dtype).
#pragma once
#include "core/tensor.h"

namespace lctx::ops {

void gelu_forward(Tensor& out, const Tensor& x, Stream s = {});

void gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, Stream s = {});

}  // namespace lctx::ops
