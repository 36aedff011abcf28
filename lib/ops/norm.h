// Shared implementation of RMSNorm and LayerNorm (internal to lctx::ops): both normalize each
// row of x [rows, C] by rstd = 1 / sqrt(var + eps), LayerNorm after subtracting the row mean,
// RMSNorm with var = mean(x^2). One kernel with a runtime NormKind serves both. RMSNorm also
// takes groups: each row's C channels in `groups` contiguous groups of C / groups, each
// normalised on its own (rstd [rows * groups]; w stays [C]), as Mamba-2's gated norm.
// Public API: ops/rmsnorm.h, ops/layernorm.h.
#pragma once
#include "core/tensor.h"
#include "ops/common.h"

namespace lctx::ops::detail {

enum class NormKind { rms, layer };

// Validates and runs the forward; mean/rstd/out are written.
void norm_forward(const char* op, NormKind kind, Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x,
                  const Tensor& w, const Tensor& b, float eps, Stream s, int64_t groups = 1);
// dx overwritten; dw, db per mode (either may be undefined to skip).
void norm_backward(const char* op, NormKind kind, Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout,
                   const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, GradMode mode, Stream s,
                   int64_t groups = 1);

// The CUDA halves of grouped RMSNorm (norm.cu; groups > 1), on validated tensors.
void rms_groups_forward_cuda(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps, int64_t groups,
                             Stream s);
void rms_groups_backward_cuda(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                              const Tensor& rstd, int64_t groups, GradMode mode, Stream s);

}  // namespace lctx::ops::detail
