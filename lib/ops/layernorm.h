// LayerNorm over the last dim: out = (x - mean) * rstd * w + b, rstd = 1 / sqrt(var + eps) with
// the biased variance, per row. x [..., C], w [C], b [C] (undefined: no bias); out has x's
// shape and dtype. mean and rstd [rows] are saved as explicit activations for the backward,
// in wide_dtype (f32; f64 for f64 inputs).
// Backward: dx (x's dtype, overwritten), dw and db (wide_dtype, per GradMode; undefined skips).
#pragma once
#include "core/tensor.h"
#include "ops/common.h"

namespace lctx::ops {

void layernorm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w, const Tensor& b,
                       float eps = 1e-5f, Stream s = {});

void layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x, const Tensor& w,
                        const Tensor& mean, const Tensor& rstd, GradMode mode, Stream s = {});

}  // namespace lctx::ops
