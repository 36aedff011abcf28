// Operand checks of the lctx::ssm ops (operand.h).
#include "ssm/operand.h"

namespace lctx::ssm::detail {

const void* operand(const char* op, const char* name, const Tensor& t, const Shape& shape, DType dtype,
                    const Tensor& ref) {
  check_shape(op, name, t, shape);
  check_dtype(op, name, t, dtype);
  check_contiguous(op, name, t);
  check_same_device(op, {&ref, &t});
  return t.raw();
}

const void* optional_operand(const char* op, const char* name, const Tensor& t, const Shape& shape, DType dtype,
                             const Tensor& ref) {
  return t.defined() ? operand(op, name, t, shape, dtype, ref) : nullptr;
}

void* alloc(Tensor& t, const Shape& shape, DType dtype, const Tensor& like) {
  t = Tensor::empty(shape, dtype, like.device());
  return t.raw();
}

void check_cpu_float(const char* op, const char* name, const Tensor& x) {
  LCTX_CHECK(x.device().is_cpu(), op, ": ", name, " ", x.str(),
             " is a CUDA tensor; only the CPU implementation exists so far");
  LCTX_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, op,
             ": the CPU implementation supports f32 and f64, got ", name, " ", x.str());
}

}  // namespace lctx::ssm::detail
