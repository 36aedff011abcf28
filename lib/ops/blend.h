// Two outputs blended per row, the memory kind's fusion (mixers/memory.h): over rows of the
// last dimension, o = (1 - r) a + r b with r = sigmoid(z) for one gate logit z per row (learned
// fusion) or a constant ratio (fusion_ratio). Backward: da = (1 - r) do, db = r do and, with
// logits, dz = r (1 - r) sum_e do (b - a) (r recomputed from z, nothing saved). a, b, o and the
// gradients contiguous and of one dtype, [.., E]; z of that dtype with one element per row.
// CPU: f32/f64; CUDA: f32/bf16/f16 with fp32 math.
#pragma once
#include "core/tensor.h"

namespace lctx::ops {

struct BlendWeight {
  Tensor logits;       // one per row (any shape); undefined: the constant `ratio`
  double ratio = 0.5;  // r without logits, in [0, 1]
};

struct BlendGrads {
  Tensor da, db;  // like a, b: overwritten
  Tensor dz;      // like logits (with logits): overwritten
};

void blend_forward(Tensor& o, const Tensor& a, const Tensor& b, const BlendWeight& w, Stream s = {});

void blend_backward(BlendGrads& g, const Tensor& d_o, const Tensor& a, const Tensor& b, const BlendWeight& w,
                    Stream s = {});

}  // namespace lctx::ops
