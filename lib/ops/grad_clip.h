// Global gradient-norm clipping over a list of gradient tensors (all on one device; each
// contiguous, any float dtype the device supports): norm = sqrt(sum over all elements g^2),
// squares summed in fp32 per block (CUDA) / double (CPU), the partial sums in double on the
// host, in a fixed order (deterministic). When the norm is finite and above max_norm, every
// gradient is scaled in place by max_norm / (norm + 1e-6) (as torch.nn.utils.clip_grad_norm_).
// A non-finite norm (a NaN or inf somewhere) is reported with finite = false and nothing is
// scaled: the caller decides (skip the step, lower the loss scale), nothing silently becomes NaN.
// Returns after synchronizing with `s` (the norm is needed on the host).
#pragma once
#include <span>

#include "core/tensor.h"

namespace lctx::ops {

struct GradNorm {
  double norm = 0;       // global L2 norm before clipping (inf / NaN when non-finite)
  bool finite = true;    // false: norm is inf or NaN, gradients untouched
  bool clipped = false;  // true: gradients were scaled by `scale`
  double scale = 1.0;
};

// Norm only.
GradNorm grad_norm(std::span<const Tensor> grads, Stream s = {});
// Norm, and clipping to max_norm (> 0).
GradNorm clip_grad_norm(std::span<const Tensor> grads, double max_norm, Stream s = {});

}  // namespace lctx::ops
