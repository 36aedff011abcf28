// Rotary position embedding on x [B, S, H, D] (D even), "half-split" pairing as in GPT-NeoX /
// Hugging Face Llama: element i of the first half rotates with element i + D/2,
//   out[i]       = x[i] cos(a) - x[i + D/2] sin(a)
//   out[i + D/2] = x[i] sin(a) + x[i + D/2] cos(a),   a = pos * theta^(-2i/D),  i < D/2.
// pos comes from `positions`, i32 [S] (shared by the batch) or [B, S]: global token positions,
// so sequence-parallel shards with any offset or a zigzag permutation rotate exactly as the
// unsharded sequence would. Angles and their sin/cos are computed in double (exact enough at
// positions in the millions), then applied in fp32 (CUDA) or the input type (CPU).
// Backward is the rotation by -a. out / dx may be the input itself (in place).
#pragma once
#include "core/tensor.h"

namespace lctx::ops {

void rope_forward(Tensor& out, const Tensor& x, const Tensor& positions, double theta = 10000.0, Stream s = {});

void rope_backward(Tensor& dx, const Tensor& dout, const Tensor& positions, double theta = 10000.0, Stream s = {});

}  // namespace lctx::ops
