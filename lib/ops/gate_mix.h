// Branch outputs mixed by learned sigmoid gates, NSA's output (mixers/nsa.h): per row i and head
// h, o[i, h] = sum_t g_t o_t[i, h] with g_t = sigmoid(z[i, t, h]), one gate logit per (row,
// branch, head), the logits of a row branch-major ([.., n H]: branch 0's H heads, then branch
// 1's, ...). Backward: d_t = g_t do and dz_t = g_t (1 - g_t) sum_e do o_t (g recomputed from z,
// so nothing but the logits is saved). Branches [.., H, E], any number n >= 1, o and the
// gradients like them, logits [.., n H]: contiguous, one dtype.
// CPU: f32/f64; CUDA: f32/bf16/f16 with fp32 math (8 branches per pass: with more, o is
// rounded to its dtype between passes).
#pragma once
#include <span>

#include "core/tensor.h"

namespace lctx::ops {

void gate_mix_forward(Tensor& o, std::span<const Tensor> branches, const Tensor& logits, Stream s = {});

// d_branches like branches, d_logits like logits: overwritten.
void gate_mix_backward(std::span<const Tensor> d_branches, Tensor& d_logits, const Tensor& d_o,
                       std::span<const Tensor> branches, const Tensor& logits, Stream s = {});

}  // namespace lctx::ops
