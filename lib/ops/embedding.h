// Token embedding: out[..., :] = W[ids[...], :] for i32 token ids of any shape (usually
// [B, S]) and a table W [V, D]; out has shape ids.shape + [D] and W's dtype.
//
// Backward scatter-adds dout rows into dW [V, D] (wide_dtype: f32, f64 for f64 inputs),
// overwritten or accumulated per GradMode. The CPU sums every row in token order (each
// thread owns a slice of D, so the result does not depend on the thread count). CUDA uses
// fp32 atomicAdd, one thread per (token, d): fast and simple, but the summation order of
// repeated tokens is not fixed, so dW may differ in the last bits from run to run.
//
// Ids outside [0, V) are an error on the CPU; CUDA cannot check without a sync, so it writes
// zeros for such a row (forward) and skips it (backward).
#pragma once
#include "core/tensor.h"
#include "ops/common.h"

namespace lctx::ops {

void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& w, Stream s = {});

void embedding_backward(Tensor& dw, const Tensor& ids, const Tensor& dout, GradMode mode, Stream s = {});

}  // namespace lctx::ops
