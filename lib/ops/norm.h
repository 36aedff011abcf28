// Shared implementation of RMSNorm and LayerNorm (internal to lctx::ops): both normalize each
// row of x [rows, C] by rstd = 1 / sqrt(var + eps), LayerNorm after subtracting the row mean,
// RMSNorm with var = mean(x^2). One kernel with a runtime NormKind serves both.
// Public API: ops/rmsnorm.h, ops/layernorm.h.
#pragma once
#include "core/tensor.h"
#include "ops/common.h"

namespace lctx::ops::detail {

enum class NormKind { rms, layer };

// Validates and runs the forward; mean/rstd/out are written.
void norm_forward(const char* op, NormKind kind, Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x,
                  const Tensor& w, const Tensor& b, float eps, Stream s);
// dx overwritten; dw, db per mode (either may be undefined to skip).
void norm_backward(const char* op, NormKind kind, Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout,
                   const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, GradMode mode, Stream s);

}  // namespace lctx::ops::detail
