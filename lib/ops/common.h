// Shared vocabulary of lctx::ops: how weight gradients are written (GradMode; they are kept in
// wide_dtype, core/dtype.h), and the small host-side helpers every op's dispatch uses (row
// counting, up-front checks, the error for CUDA tensors on a CPU-only build: LCTX_OPS_CUDA in
// ops/cuda_ops.h).
#pragma once
#include <cstdint>

#include "core/grad_mode.h"
#include "core/tensor.h"

namespace lctx::ops {

using lctx::GradMode;

namespace detail {

// Rows of a [..., C] tensor (product of all dims but the last).
inline int64_t rows_of(const Tensor& t) {
  const int64_t c = t.size(-1);
  return c == 0 ? 0 : t.numel() / c;
}

// The error for a CUDA tensor when lctx was built without CUDA. R: the type of the call it
// stands in for (LCTX_OPS_CUDA).
template <class R = void>
[[noreturn]] R fail_no_cuda(const char* op, const Tensor& t) {
  LCTX_FAIL(op, ": ", t.str(), " is a CUDA tensor but lctx was built without CUDA (LCTX_CUDA=OFF)");
}

// Up-front checks shared by the ops: defined, contiguous, on `device`, with a float dtype the
// device supports (CPU: f32/f64, CUDA: f32/bf16/f16).
void check_float_input(const char* op, const char* name, const Tensor& t);
void check_on_device(const char* op, const char* name, const Tensor& t, Device device);

}  // namespace detail
}  // namespace lctx::ops
