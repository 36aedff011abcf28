#include "ops/embedding.h"

#include <algorithm>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

void check_ids(const char* op, const Tensor& ids) {
  LCTX_CHECK(ids.defined(), op, ": ids is undefined");
  check_dtype(op, "ids", ids, DType::i32);
  check_contiguous(op, "ids", ids);
}

Shape out_shape(const Tensor& ids, int64_t d) {
  Shape s = ids.shape();
  s.push_back(d);
  return s;
}

void check_cpu_ids(const char* op, const int32_t* ids, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; ++i)
    LCTX_CHECK(ids[i] >= 0 && ids[i] < vocab, op, ": token id ", ids[i], " at flat position ", i,
               " is outside the vocabulary [0, ", vocab, ")");
}

template <class T>
void cpu_forward(T* out, const int32_t* ids, const T* w, int64_t n, int64_t d) {
#pragma omp parallel for schedule(static) if (n * d > 65536)
  for (int64_t i = 0; i < n; ++i) std::copy(w + ids[i] * d, w + (ids[i] + 1) * d, out + i * d);
}

template <class T>
void cpu_backward(T* dw, const int32_t* ids, const T* dout, int64_t n, int64_t vocab, int64_t d, bool accumulate) {
  if (!accumulate) std::fill(dw, dw + vocab * d, T(0));
  constexpr int64_t kChunk = 64;  // columns per task: threads own disjoint columns
  const int64_t chunks = (d + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n * d > 65536)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t c0 = ch * kChunk, c1 = std::min(d, c0 + kChunk);
    for (int64_t i = 0; i < n; ++i) {
      T* row = dw + ids[i] * d;
      const T* g = dout + i * d;
      for (int64_t c = c0; c < c1; ++c) row[c] += g[c];
    }
  }
}

}  // namespace

void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& w, Stream s) {
  constexpr const char* op = "embedding_forward";
  check_ids(op, ids);
  detail::check_float_input(op, "w", w);
  LCTX_CHECK(w.dim() == 2, op, ": w must be [V, D], got ", w.str());
  check_same_device(op, {&out, &ids, &w});
  check_shape(op, "out", out, out_shape(ids, w.size(1)));
  check_dtype(op, "out", out, w.dtype());
  check_contiguous(op, "out", out);
  if (out.device().is_cuda()) return LCTX_OPS_CUDA(op, out, cuda::embedding_forward(out, ids, w, s));
  const int32_t* idp = ids.data<int32_t>();
  check_cpu_ids(op, idp, ids.numel(), w.size(0));
  LCTX_DISPATCH_CPU_FLOAT(w.dtype(), op, [&] {
    cpu_forward(out.data<scalar_t>(), idp, w.data<scalar_t>(), ids.numel(), w.size(1));
  });
}

void embedding_backward(Tensor& dw, const Tensor& ids, const Tensor& dout, GradMode mode, Stream s) {
  constexpr const char* op = "embedding_backward";
  check_ids(op, ids);
  detail::check_float_input(op, "dout", dout);
  LCTX_CHECK(dw.defined() && dw.dim() == 2, op, ": dw must be [V, D], got ", dw.str());
  check_same_device(op, {&dw, &ids, &dout});
  check_dtype(op, "dw", dw, wide_dtype(dout.dtype()));
  check_contiguous(op, "dw", dw);
  check_shape(op, "dout", dout, out_shape(ids, dw.size(1)));
  if (dw.device().is_cuda()) return LCTX_OPS_CUDA(op, dw, cuda::embedding_backward(dw, ids, dout, mode, s));
  const int32_t* idp = ids.data<int32_t>();
  check_cpu_ids(op, idp, ids.numel(), dw.size(0));
  LCTX_DISPATCH_CPU_FLOAT(dout.dtype(), op, [&] {
    cpu_backward(dw.data<scalar_t>(), idp, dout.data<scalar_t>(), ids.numel(), dw.size(0), dw.size(1),
                 mode == GradMode::accumulate);
  });
}

}  // namespace lctx::ops
