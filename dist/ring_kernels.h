// Small kernels of sequence-parallel attention, on the CPU and on CUDA (ring_kernels.cu):
// the exact merge of partial attention results (o, lse), plus the view helper for packed
// buffers (accumulation is Tensor::add_from).
// Partial results come from attn::flash_forward with OutputDType::f32 ("wide" dtype: f64 for
// f64 inputs, else f32); they are merged in that dtype and cast once by the caller.
#pragma once
#include "core/tensor.h"

namespace lctx::dist {

// Merges a partial result into the running one, row by row (b, i, h):
//   lse = log(exp(lse_acc) + exp(lse_blk)),  o_acc = (exp(lse_acc) o_acc + exp(lse_blk) o_blk) / exp(lse)
// computed stably from the max; a side with lse = -inf weighs 0 and a row with nothing
// visible on either side stays (o 0, lse -inf): never NaN. o_* [B, n, H, D] (head_dim
// contiguous, other strides free), lse_* [B, H, n] (sequence stride 1); all of the wide dtype.
void merge_attention(const Tensor& o_acc, const Tensor& lse_acc, const Tensor& o_blk, const Tensor& lse_blk,
                     Stream s = {});

// Block i along dim 0 of a contiguous tensor, without that dim (packed K/V buffers, gathered
// blocks): [n, *rest] -> [*rest].
inline Tensor block_of(const Tensor& t, int64_t i) {
  return t.slice(0, i, i + 1).view(Shape(t.shape().begin() + 1, t.shape().end()));
}

#ifdef LCTX_HAVE_CUDA
namespace detail {
void merge_attention_cuda(const Tensor& o_acc, const Tensor& lse_acc, const Tensor& o_blk, const Tensor& lse_blk,
                          Stream s);
}  // namespace detail
#endif

}  // namespace lctx::dist
