#include "ops/residual.h"

#include "core/strided.h"
#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
void cpu_add(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// out = a + b; on CUDA b may also be bf16/f16 added into f32 (core's cuda_add).
void add(const char* op, Tensor& out, const Tensor& a, const Tensor& b, Stream s) {
  if (out.device().is_cuda()) return LCTX_OPS_CUDA(op, out, lctx::detail::cuda_add(out, a, b, s));
  LCTX_DISPATCH_CPU_FLOAT(out.dtype(), op,
                          [&] { cpu_add(out.data<scalar_t>(), a.data<scalar_t>(), b.data<scalar_t>(), out.numel()); });
}

}  // namespace

void residual_forward(Tensor& out, const Tensor& a, const Tensor& b, Stream s) {
  constexpr const char* op = "residual_forward";
  detail::check_float_input(op, "a", a);
  check_same_device(op, {&out, &a, &b});
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"b", &b}, {"out", &out}}) {
    check_shape(op, name, *t, a.shape());
    check_dtype(op, name, *t, a.dtype());
    check_contiguous(op, name, *t);
  }
  add(op, out, a, b, s);
}

void residual_backward(Tensor& da, Tensor& db, const Tensor& dout, GradMode mode, Stream s) {
  constexpr const char* op = "residual_backward";
  detail::check_float_input(op, "dout", dout);
  check_same_device(op, {&da, &db, &dout});
  for (const auto& [name, t] : {std::pair<const char*, Tensor*>{"da", &da}, {"db", &db}}) {
    if (!t->defined()) continue;
    check_shape(op, name, *t, dout.shape());
    LCTX_CHECK(t->dtype() == dout.dtype() || t->dtype() == DType::f32, op, ": ", name, " ", t->str(),
               " must have dtype ", dtype_name(dout.dtype()), " or f32");
    check_contiguous(op, name, *t);
    if (mode == GradMode::overwrite) {
      if (t->raw() != dout.raw() || t->dtype() != dout.dtype()) t->copy_from(dout, s);
      continue;
    }
    LCTX_CHECK(t->device().is_cuda() || t->dtype() == dout.dtype(), op, ": on the CPU ", name, " ", t->str(),
               " must have dout's dtype ", dtype_name(dout.dtype()));
    add(op, *t, *t, dout, s);
  }
}

}  // namespace lctx::ops
