// y = -exp(x), elementwise on any contiguous shape: a rate kept negative by storing its log
// (Mamba's A = -exp(A_log)). y is in wide_dtype(x) (A scales whole sequences of dt in the
// scans). Backward: dx = dy * y (= dy dy/dx), from the forward's y; dy and y in wide_dtype,
// dx in x's dtype or the wide dtype (a parameter's gradient), overwritten.
// CPU: f32/f64; CUDA: f32/bf16/f16 with fp32 math.
#pragma once
#include "core/tensor.h"

namespace lctx::ops {

void negative_exp_forward(Tensor& y, const Tensor& x, Stream s = {});

void negative_exp_backward(Tensor& dx, const Tensor& dy, const Tensor& y, Stream s = {});

}  // namespace lctx::ops
