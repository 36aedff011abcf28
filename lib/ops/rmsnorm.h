// RMSNorm over the last dim: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), per row.
// x [..., C], w [C]; out has x's shape and dtype. rstd [rows] (rows = numel / C) is saved by the
// forward as an explicit activation for the backward, in wide_dtype (f32; f64 for f64 inputs);
// statistics are computed in fp32 (CUDA) or f64 (CPU).
// Backward: dx (x's dtype, overwritten), dw (wide_dtype, per GradMode; undefined skips it).
#pragma once
#include "core/tensor.h"
#include "ops/common.h"

namespace lctx::ops {

void rmsnorm_forward(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps = 1e-6f, Stream s = {});

void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                      const Tensor& rstd, GradMode mode, Stream s = {});

// Grouped (mamba_ssm's RMSNormGated with group_size = C / groups, Mamba-2's gated norm): each
// row's C channels in `groups` contiguous groups, each normalised by its own rstd; rstd is
// [rows * groups], w stays [C]. groups = 1 is the plain RMSNorm above.
void rmsnorm_forward(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps, int64_t groups,
                     Stream s = {});
void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                      const Tensor& rstd, GradMode mode, int64_t groups, Stream s = {});

}  // namespace lctx::ops
