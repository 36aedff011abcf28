// Index of the largest element of every row: out[i] = argmax_j x[i, j] for x [..., V], the
// first index on ties. The trainer's accuracy reads these (4 bytes per row) instead of copying
// whole logit rows to the host.
#pragma once
#include "core/tensor.h"
#include "ops/common.h"

namespace lctx::ops {

// out: i32 [rows of x], contiguous, on x's device. Rows holding NaN give an unspecified index.
void argmax_rows(Tensor& out, const Tensor& x, Stream s = {});

}  // namespace lctx::ops
