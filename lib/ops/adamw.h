// AdamW (decoupled weight decay, bias-corrected moments), PyTorch's torch.optim.AdamW update:
//   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// applied to fp32 master weights `master` with fp32 moments m, v (f64 on the CPU for f64 grads),
// g = grad * grad_scale (e.g. 1 / loss_scale, or a clipping factor). The updated master is then
// rounded into `param`, the copy the model computes with (bf16, f16 or f32 on CUDA; f32 or f64
// on the CPU), or `param` is left undefined when master is the parameter itself. `step` is the
// 1-based number of this update, kept by the caller (it is part of the checkpoint).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace lctx::ops {

struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
};

void adamw_update(Tensor& param, Tensor& master, Tensor& m, Tensor& v, const Tensor& grad, const AdamWConfig& cfg,
                  int64_t step, float grad_scale = 1.0f, Stream s = {});

}  // namespace lctx::ops
