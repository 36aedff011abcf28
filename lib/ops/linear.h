// Linear layer y = x W^T + bias, with x [..., K], W [N, K] (PyTorch's nn.Linear layout),
// bias [N] optional. Built on ops::matmul; the bias is broadcast into y first and the GEMM
// adds onto it (beta = 1), so it is summed in fp32 before y is rounded.
//
// Gradients: dx = dy W (dtype of x, overwritten), dW = dy^T x and dbias = sum_rows dy, both in
// wide_dtype (f32; f64 for f64 inputs), overwritten or accumulated per GradMode. Any gradient
// passed undefined is skipped (e.g. no dx for the first layer).
#pragma once
#include "core/tensor.h"
#include "ops/common.h"

namespace lctx::ops {

// y: [..., N] in the dtype of x (CUDA also allows f32 y for 16-bit x); bias: y's dtype or undefined.
void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias, Stream s = {});

void linear_backward(Tensor& dx, Tensor& dw, Tensor& dbias, const Tensor& dy, const Tensor& x, const Tensor& w,
                     GradMode mode, Stream s = {});

}  // namespace lctx::ops
