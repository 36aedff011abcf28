#include "ops/argmax.h"

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
void cpu_argmax(int32_t* out, const T* x, int64_t rows, int64_t v) {
#pragma omp parallel for schedule(static) if (rows * v > 65536)
  for (int64_t i = 0; i < rows; ++i) {
    const T* row = x + i * v;
    int64_t best = 0;
    for (int64_t j = 1; j < v; ++j)
      if (row[j] > row[best]) best = j;
    out[i] = static_cast<int32_t>(best);
  }
}

}  // namespace

void argmax_rows(Tensor& out, const Tensor& x, Stream s) {
  constexpr const char* op = "argmax_rows";
  detail::check_float_input(op, "x", x);
  LCTX_CHECK(x.dim() >= 1 && x.size(-1) > 0 && x.size(-1) <= INT32_MAX, op, ": x ", x.str(),
             " needs a last dim of 1 .. 2^31-1 elements");
  const int64_t rows = detail::rows_of(x);
  check_shape(op, "out", out, {rows});
  check_dtype(op, "out", out, DType::i32);
  check_contiguous(op, "out", out);
  check_same_device(op, {&out, &x});
  if (rows == 0) return;
  if (x.device().is_cuda()) return LCTX_OPS_CUDA(op, x, cuda::argmax_rows(out, x, s));
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op,
                          [&] { cpu_argmax(out.data<int32_t>(), x.data<scalar_t>(), rows, x.size(-1)); });
}

}  // namespace lctx::ops
