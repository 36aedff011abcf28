#include "ops/common.h"

namespace lctx::ops::detail {

void check_float_input(const char* op, const char* name, const Tensor& t) {
  LCTX_CHECK(t.defined(), op, ": ", name, " is undefined");
  check_contiguous(op, name, t);
  const DType d = t.dtype();
  if (t.device().is_cpu()) {
    LCTX_CHECK(d == DType::f32 || d == DType::f64, op, ": ", name, " ", t.str(),
               " must be f32 or f64 on the CPU");
  } else {
    LCTX_CHECK(d == DType::f32 || d == DType::bf16 || d == DType::f16, op, ": ", name, " ", t.str(),
               " must be f32, bf16 or f16 on CUDA");
  }
}

void check_on_device(const char* op, const char* name, const Tensor& t, Device device) {
  LCTX_CHECK(t.defined(), op, ": ", name, " is undefined");
  LCTX_CHECK(t.device() == device, op, ": ", name, " ", t.str(), " must be on ", device.str());
}

}  // namespace lctx::ops::detail
