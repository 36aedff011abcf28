// The checks every operand of the lctx::ssm ops gets before its pointer goes into a params
// struct: shape, dtype, contiguity and device, with errors naming the op, the operand and the
// shape expected; and the device/dtype rule of the CPU implementations. Internal to lctx::ssm.
#pragma once
#include "core/tensor.h"

namespace lctx::ssm::detail {

// t has `shape` and `dtype`, is contiguous and on `ref`'s device; returns its data.
const void* operand(const char* op, const char* name, const Tensor& t, const Shape& shape, DType dtype,
                    const Tensor& ref);
// The same for an optional operand: nullptr when t is undefined.
const void* optional_operand(const char* op, const char* name, const Tensor& t, const Shape& shape, DType dtype,
                             const Tensor& ref);
// t = a new contiguous tensor of `shape` and `dtype` on `like`'s device (an output); its data.
void* alloc(Tensor& t, const Shape& shape, DType dtype, const Tensor& like);
// `x` (named `name`) leads a call: a CPU tensor in f32 or f64 (the ops have no CUDA kernels yet).
void check_cpu_float(const char* op, const char* name, const Tensor& x);

}  // namespace lctx::ssm::detail
