// Causal depthwise conv1d: the short convolution in front of a Mamba scan. Per channel c,
//   pre_t = bias[c] + sum_{k < W} weight[c, k] x_{t - (W-1) + k},   y_t = pre_t or silu(pre_t)
// where rows before the sequence come from `history` (the W-1 rows before it, oldest first;
// undefined: zeros), so a sequence processed in pieces, or sharded over ranks through
// dist/halo.h, gives the same result as in one call: the next piece's history is the last W-1
// rows of this one (plus older rows when a piece is shorter than W-1). The gradient of the
// history goes back to whoever holds those rows. Layout [B, S, C] (channels last, as the
// in_proj output); W in 1..kMaxConvWidth. Contiguous tensors; weight, bias and their gradients
// in wide_dtype(x). CPU: f32/f64; CUDA (causal_conv1d.cu): bf16/f16/f32 with fp32 math.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace lctx::ssm {

constexpr int kMaxConvWidth = 8;

enum class Activation { none, silu };

struct ConvOptions {
  Activation activation = Activation::none;
};

struct ConvInputs {
  Tensor x;        // [B, S, C]
  Tensor weight;   // [C, W], wide dtype
  Tensor bias;     // [C], wide dtype; undefined: none
  Tensor history;  // [B, W-1, C], dtype of x; undefined: zeros
};

struct ConvGrads {
  Tensor dx;         // like x
  Tensor dweight;    // like weight
  Tensor dbias;      // like bias (undefined without a bias)
  Tensor d_history;  // [B, W-1, C], also when history was undefined (the gradient of zeros)
};

// y [B, S, C] in x's dtype.
Tensor causal_conv1d_forward(const ConvInputs& in, const ConvOptions& opts, Stream s = {});

// Gradients given dL/dy (`dy`, like y). New tensors are returned.
ConvGrads causal_conv1d_backward(const ConvInputs& in, const Tensor& dy, const ConvOptions& opts, Stream s = {});

}  // namespace lctx::ssm
