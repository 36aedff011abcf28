// Residual connection out = a + b (same shape and dtype, elementwise). Its backward is the
// identity: the incoming gradient goes unchanged to both branches, so residual_backward just
// writes or adds dout into the branch gradients. The same call is the trainer's generic
// "add this gradient into that buffer" helper (e.g. accumulating a bf16 gradient into fp32).
#pragma once
#include "core/tensor.h"
#include "ops/common.h"

namespace lctx::ops {

void residual_forward(Tensor& out, const Tensor& a, const Tensor& b, Stream s = {});

// da, db: dout's shape, dtype of dout or f32; overwritten (copy) or accumulated per mode.
// Either may be undefined; with GradMode::overwrite one of them may be dout itself.
void residual_backward(Tensor& da, Tensor& db, const Tensor& dout, GradMode mode, Stream s = {});

}  // namespace lctx::ops
