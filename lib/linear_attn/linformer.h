// Linformer (Wang et al., 2020): keys and values are projected along the sequence to k rows by
// learned E, F [k, n] (n: the longest sequence; a shorter call uses their first S columns, as
// fairseq does), then every query attends with exact softmax over the k projected rows:
//   K~ = E[:, :S] K,  V~ = F[:, :S] V   (per batch row and kv head),  o = softmax(q K~^T * scale) V~.
// Cost O(S k) instead of O(S^2). Bidirectional only: each projected row mixes every position,
// so there is no causal form. The attention over the projected rows is attn::flash_forward /
// flash_backward (GQA as there: Hq a multiple of Hkv); the backward recomputes the projections
// and that small attention rather than having them saved.
// Devices: the CPU in f32/f64 and CUDA in bf16/f16 (attn::flash's CUDA kernels: head_dim 64 or
// 128). The projections are ops::matmul per batch row (fp32 accumulation, K~ and V~ rounded to
// the input dtype once); the gradients of E and F accumulate over batch rows in wide_dtype.
#pragma once

#include "core/tensor.h"

namespace lctx::linear_attn {

struct LinformerInputs {
  Tensor q;  // [B, S, Hq, D]
  Tensor k;  // [B, S, Hkv, D]
  Tensor v;  // [B, S, Hkv, D]
  Tensor e;  // [k, n], n >= S, contiguous, dtype of q
  Tensor f;  // [k, n]
};

struct LinformerOptions {
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(D)
};

struct LinformerGrads {
  Tensor dq, dk, dv;  // like q, k, v (contiguous)
  Tensor de, df;      // e's, f's shape in wide_dtype (columns S.. n-1 are zero)
};

// The sequence projection, a piece of the sequence at a time (sequence parallelism sums the
// pieces over ranks): x~ [B, k, H, D] = p_cols x per batch row, p_cols [k, S] the columns of E
// or F at x's positions (contiguous), x [B, S, H, D] contiguous, one dtype.
Tensor linformer_project(const Tensor& p_cols, const Tensor& x, Stream s = {});
struct LinformerProjectGrads {
  Tensor dx;      // like x: p_cols^T dx~ per batch row
  Tensor dp_cols;  // p_cols' shape in wide_dtype: sum over batch rows of dx~ x^T
};
LinformerProjectGrads linformer_project_backward(const Tensor& p_cols, const Tensor& x, const Tensor& dxp,
                                                 Stream s = {});

// o [B, S, Hq, D] in q's dtype.
Tensor linformer_forward(const LinformerInputs& in, const LinformerOptions& opts, Stream s = {});

LinformerGrads linformer_backward(const LinformerInputs& in, const Tensor& dout, const LinformerOptions& opts,
                                  Stream s = {});

}  // namespace lctx::linear_attn
