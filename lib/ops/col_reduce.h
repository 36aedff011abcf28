// Column reductions over a [rows, cols] activation gradient, as used by the weight/bias
// gradients of the norms and of linear: out[c] = sum_r dy[r,c] * f(r,c), in fp32, in a fixed
// order (deterministic: per-block partial sums, then an ordered sum of the partials).
// CUDA only (the CPU references reduce inline); internal to lctx::ops.
#pragma once
#include "core/tensor.h"
#include "ops/common.h"

namespace lctx::ops::detail {

enum class ColReduce {
  sum,          // f = 1                                (bias gradients)
  x_rstd,       // f = x[r,c] * rstd[r]                 (RMSNorm weight)
  x_mean_rstd,  // f = (x[r,c] - mean[r]) * rstd[r]     (LayerNorm weight)
};

// dy, x: contiguous, same dtype (f32/bf16/f16); mean, rstd: f32 [rows] (undefined when unused);
// out: f32 [cols], overwritten or accumulated into.
void cuda_col_reduce(Tensor& out, ColReduce kind, const Tensor& dy, const Tensor& x, const Tensor& mean,
                     const Tensor& rstd, int64_t rows, int64_t cols, GradMode mode, Stream s);

}  // namespace lctx::ops::detail
