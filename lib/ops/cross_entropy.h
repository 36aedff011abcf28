// Fused softmax cross-entropy over logits [N, V] with i32 targets [N]: one pass per row gives
// the row loss logsumexp(z) - z[target] and, when requested, dlogits in the same pass:
//   dlogits = loss_scale / n_valid * (softmax(z) - onehot(target))
// where n_valid is the number of rows whose target is not ignore_index, i.e. the gradient of
// loss_scale * mean_loss. Rows with target == ignore_index get loss 0 and zero dlogits; the mean
// is over the other rows (0 when there are none). loss_scale scales only the gradient (for
// loss scaling / gradient accumulation), never the reported losses.
// losses: [N], mean_loss: one element; both wide_dtype (f32; f64 for f64 logits), computed in
// fp32 (CUDA) or double (CPU). dlogits has logits' shape and dtype and may be logits itself
// (overwritten in place, saving a [N, V] buffer). Nothing syncs with the host.
// Targets outside [0, V) (and not ignore_index) are an error on the CPU; CUDA gives that row
// loss NaN (visible in the mean) and zero dlogits.
#pragma once
#include "core/tensor.h"

namespace lctx::ops {

struct CrossEntropyOptions {
  int ignore_index = -100;
  float loss_scale = 1.0f;
};

// Losses only.
void cross_entropy_forward(Tensor& losses, Tensor& mean_loss, const Tensor& logits, const Tensor& targets,
                           const CrossEntropyOptions& opts = {}, Stream s = {});

// Losses and dlogits in one pass over the logits.
void cross_entropy_forward_backward(Tensor& losses, Tensor& mean_loss, Tensor& dlogits, const Tensor& logits,
                                    const Tensor& targets, const CrossEntropyOptions& opts = {}, Stream s = {});

}  // namespace lctx::ops
