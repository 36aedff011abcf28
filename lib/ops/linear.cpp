#include "ops/linear.h"

#include "ops/cuda_ops.h"
#include "ops/matmul.h"

namespace lctx::ops {

namespace {

template <class T>
void cpu_broadcast_rows(T* y, const T* bias, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = bias[c];
}

// dbias[c] (+)= sum_r dy[r, c]; rows summed in order per column (deterministic).
template <class T>
void cpu_bias_grad(T* db, const T* dy, int64_t rows, int64_t cols, bool accumulate) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t c = 0; c < cols; ++c) {
    T s = 0;
    for (int64_t r = 0; r < rows; ++r) s += dy[r * cols + c];
    db[c] = accumulate ? db[c] + s : s;
  }
}

// [..., C] -> [rows, C] view of a contiguous tensor.
Tensor as_2d(const Tensor& t) { return t.view({-1, t.size(-1)}); }

}  // namespace

void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias, Stream s) {
  constexpr const char* op = "linear_forward";
  detail::check_float_input(op, "x", x);
  detail::check_float_input(op, "w", w);
  LCTX_CHECK(y.defined(), op, ": output y is undefined");
  check_contiguous(op, "y", y);
  check_same_device(op, {&y, &x, &w, &bias});
  LCTX_CHECK(x.dim() >= 2 && w.dim() == 2, op, ": expected x [..., K] and w [N, K], got x ", x.str(), ", w ",
             w.str());
  const int64_t k = x.size(-1), n = w.size(0);
  check_shape(op, "w", w, {n, k});
  check_dtype(op, "w", w, x.dtype());
  Shape ys = x.shape();
  ys.back() = n;
  check_shape(op, "y", y, ys);
  const int64_t rows = detail::rows_of(x);
  Tensor y2 = y.view({rows, n});
  if (!bias.defined()) {
    matmul(y2, as_2d(x), w, Trans::none, Trans::transpose, 1.0f, 0.0f, s);
    return;
  }
  check_shape(op, "bias", bias, {n});
  check_dtype(op, "bias", bias, y.dtype());
  check_contiguous(op, "bias", bias);
  if (y.device().is_cuda()) {
    LCTX_OPS_CUDA(op, y, cuda::broadcast_rows(y2, bias, rows, n, s));
  } else {
    LCTX_DISPATCH_CPU_FLOAT(y.dtype(), op,
                            [&] { cpu_broadcast_rows(y.data<scalar_t>(), bias.data<scalar_t>(), rows, n); });
  }
  matmul(y2, as_2d(x), w, Trans::none, Trans::transpose, 1.0f, 1.0f, s);
}

void linear_backward(Tensor& dx, Tensor& dw, Tensor& dbias, const Tensor& dy, const Tensor& x, const Tensor& w,
                     GradMode mode, Stream s) {
  constexpr const char* op = "linear_backward";
  detail::check_float_input(op, "dy", dy);
  detail::check_float_input(op, "x", x);
  detail::check_float_input(op, "w", w);
  check_same_device(op, {&dy, &x, &w, &dx, &dw, &dbias});
  LCTX_CHECK(x.dim() >= 2 && w.dim() == 2, op, ": expected x [..., K] and w [N, K], got x ", x.str(), ", w ",
             w.str());
  const int64_t k = x.size(-1), n = w.size(0);
  const int64_t rows = detail::rows_of(x);
  check_shape(op, "w", w, {n, k});
  check_dtype(op, "w", w, x.dtype());
  check_dtype(op, "dy", dy, x.dtype());
  Shape ys = x.shape();
  ys.back() = n;
  check_shape(op, "dy", dy, ys);
  const DType gd = wide_dtype(x.dtype());
  const float beta = mode == GradMode::accumulate ? 1.0f : 0.0f;
  const Tensor dy2 = as_2d(dy);
  if (dx.defined()) {
    check_like(op, "dx", dx, x);
    Tensor dx2 = as_2d(dx);
    matmul(dx2, dy2, w, Trans::none, Trans::none, 1.0f, 0.0f, s);
  }
  if (dw.defined()) {
    check_shape(op, "dw", dw, {n, k});
    check_dtype(op, "dw", dw, gd);
    check_contiguous(op, "dw", dw);
    matmul(dw, dy2, as_2d(x), Trans::transpose, Trans::none, 1.0f, beta, s);
  }
  if (dbias.defined()) {
    check_shape(op, "dbias", dbias, {n});
    check_dtype(op, "dbias", dbias, gd);
    check_contiguous(op, "dbias", dbias);
    if (dy.device().is_cuda()) {
      LCTX_OPS_CUDA(op, dy,
                    cuda::col_reduce(dbias, cuda::ColReduce::sum, dy, Tensor(), Tensor(), Tensor(), rows, n, mode, s));
    } else {
      LCTX_DISPATCH_CPU_FLOAT(dy.dtype(), op, [&] {
        cpu_bias_grad(dbias.data<scalar_t>(), dy.data<scalar_t>(), rows, n, mode == GradMode::accumulate);
      });
    }
  }
}

}  // namespace lctx::ops
