#include "ops/matmul.h"

#include <algorithm>
#include <vector>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

// Blocked GEMM: each (MB x NB) tile of c is owned by one thread and accumulated in a private
// buffer over KB-deep panels of op(a) and op(b), packed row-major so the inner loop streams
// contiguous memory whatever the transposes.
template <class T>
void cpu_gemm(T* c, const T* a, const T* b, const detail::GemmArgs& g) {
  constexpr int64_t MB = 64, NB = 256, KB = 128;
  const int64_t M = g.m, N = g.n, K = g.k;
  const bool at = g.ta == Trans::transpose, bt = g.tb == Trans::transpose;
  const T alpha = static_cast<T>(g.alpha), beta = static_cast<T>(g.beta);
  const int64_t mt = (M + MB - 1) / MB, nt = (N + NB - 1) / NB;
#pragma omp parallel
  {
    std::vector<T> ap(MB * KB), bp(KB * NB), acc(MB * NB);
#pragma omp for schedule(dynamic) collapse(2)
    for (int64_t it = 0; it < mt; ++it) {
      for (int64_t jt = 0; jt < nt; ++jt) {
        const int64_t i0 = it * MB, j0 = jt * NB;
        const int64_t mb = std::min(MB, M - i0), nb = std::min(NB, N - j0);
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t k0 = 0; k0 < K; k0 += KB) {
          const int64_t kb = std::min(KB, K - k0);
          for (int64_t i = 0; i < mb; ++i)
            for (int64_t k = 0; k < kb; ++k)
              ap[i * KB + k] = at ? a[(k0 + k) * M + i0 + i] : a[(i0 + i) * K + k0 + k];
          for (int64_t k = 0; k < kb; ++k)
            for (int64_t j = 0; j < nb; ++j)
              bp[k * NB + j] = bt ? b[(j0 + j) * K + k0 + k] : b[(k0 + k) * N + j0 + j];
          for (int64_t i = 0; i < mb; ++i) {
            T* __restrict__ accr = acc.data() + i * NB;
            for (int64_t k = 0; k < kb; ++k) {
              const T av = ap[i * KB + k];
              const T* __restrict__ br = bp.data() + k * NB;
#pragma omp simd
              for (int64_t j = 0; j < nb; ++j) accr[j] += av * br[j];
            }
          }
        }
        for (int64_t i = 0; i < mb; ++i) {
          T* cr = c + (i0 + i) * N + j0;
          const T* accr = acc.data() + i * NB;
          if (g.beta == 0.0f) {
            for (int64_t j = 0; j < nb; ++j) cr[j] = alpha * accr[j];
          } else {
            for (int64_t j = 0; j < nb; ++j) cr[j] = alpha * accr[j] + beta * cr[j];
          }
        }
      }
    }
  }
}

}  // namespace

void matmul(Tensor& c, const Tensor& a, const Tensor& b, Trans ta, Trans tb, float alpha, float beta, Stream s) {
  constexpr const char* op = "matmul";
  detail::check_float_input(op, "a", a);
  detail::check_float_input(op, "b", b);
  LCTX_CHECK(c.defined(), op, ": output c is undefined");
  check_contiguous(op, "c", c);
  check_same_device(op, {&c, &a, &b});
  LCTX_CHECK(a.dim() == 2 && b.dim() == 2 && c.dim() == 2, op, ": expected 2-D tensors, got a ", a.str(), ", b ",
             b.str(), ", c ", c.str());
  check_dtype(op, "b", b, a.dtype());
  const bool at = ta == Trans::transpose, bt = tb == Trans::transpose;
  const int64_t m = at ? a.size(1) : a.size(0), k = at ? a.size(0) : a.size(1);
  const int64_t kb = bt ? b.size(1) : b.size(0), n = bt ? b.size(0) : b.size(1);
  LCTX_CHECK(k == kb, op, ": inner dimensions differ: op(a) of ", a.str(), " is [", m, ",", k, "], op(b) of ",
             b.str(), " is [", kb, ",", n, "]");
  check_shape(op, "c", c, {m, n});
  const detail::GemmArgs g{m, n, k, ta, tb, alpha, beta};
  if (c.device().is_cuda()) {
    LCTX_CHECK(c.dtype() == a.dtype() || c.dtype() == DType::f32, op, ": c ", c.str(), " must have dtype ",
               dtype_name(a.dtype()), " or f32");
    return LCTX_OPS_CUDA(op, c, cuda::matmul(c, a, b, g, s));
  }
  check_dtype(op, "c", c, a.dtype());
  if (m == 0 || n == 0) return;
  LCTX_DISPATCH_CPU_FLOAT(a.dtype(), op, [&] {
    cpu_gemm<scalar_t>(c.data<scalar_t>(), a.data<scalar_t>(), b.data<scalar_t>(), g);
  });
}

}  // namespace lctx::ops
