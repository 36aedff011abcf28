#include "ops/norm.h"

#include <algorithm>
#include <cmath>

#include "ops/cuda_ops.h"

namespace lctx::ops::detail {

namespace {

// Row statistics and outputs accumulate in double on the CPU (the reference for CUDA).
// rows and c count groups: row r normalises channels [(r % groups) c, +c) of its row of x.
template <class T>
void cpu_forward(NormKind kind, T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows,
                 int64_t c, double eps, int64_t groups) {
#pragma omp parallel for schedule(static) if (rows * c > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * c;
    const T* wr = w + r % groups * c;
    double mu = 0;
    if (kind == NormKind::layer) {
      for (int64_t i = 0; i < c; ++i) mu += xr[i];
      mu /= static_cast<double>(c);
    }
    double var = 0;
    for (int64_t i = 0; i < c; ++i) var += (xr[i] - mu) * (xr[i] - mu);
    const double rs = 1.0 / std::sqrt(var / static_cast<double>(c) + eps);
    for (int64_t i = 0; i < c; ++i) {
      const double y = (xr[i] - mu) * rs * wr[i] + (b ? static_cast<double>(b[i]) : 0.0);
      out[r * c + i] = static_cast<T>(y);
    }
    if (mean) mean[r] = static_cast<T>(mu);
    rstd[r] = static_cast<T>(rs);
  }
}

// dx = rstd * (g - [mean(g)] - xhat * mean(g * xhat)), g = dy * w, xhat = (x - mean) * rstd;
// dw = sum_rows dy * xhat, db = sum_rows dy (rows in order: deterministic). rows and c count
// groups (cpu_forward); the statistics of channel i of row r are those of group row r * groups + i / c.
template <class T>
void cpu_backward(NormKind kind, T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* mean,
                  const T* rstd, int64_t rows, int64_t c, bool accumulate, int64_t groups) {
  if (dx) {
#pragma omp parallel for schedule(static) if (rows * c > 65536)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * c;
      const T* gr = dy + r * c;
      const T* wr = w + r % groups * c;
      const double mu = mean ? static_cast<double>(mean[r]) : 0.0, rs = rstd[r];
      double sg = 0, sgx = 0;
      for (int64_t i = 0; i < c; ++i) {
        const double g = static_cast<double>(gr[i]) * wr[i];
        sg += g;
        sgx += g * (xr[i] - mu) * rs;
      }
      sg = kind == NormKind::layer ? sg / static_cast<double>(c) : 0.0;
      sgx /= static_cast<double>(c);
      for (int64_t i = 0; i < c; ++i) {
        const double g = static_cast<double>(gr[i]) * wr[i];
        dx[r * c + i] = static_cast<T>(rs * (g - sg - (xr[i] - mu) * rs * sgx));
      }
    }
  }
  if (dw || db) {
    const int64_t full = c * groups;  // channels of a row of x
#pragma omp parallel for schedule(static) if (rows * c > 65536)
    for (int64_t i = 0; i < full; ++i) {
      double sw = 0, sb = 0;
      for (int64_t r = 0; r < rows / groups; ++r) {
        const int64_t st = r * groups + i / c;
        const double g = dy[r * full + i];
        sw += g * (x[r * full + i] - (mean ? static_cast<double>(mean[st]) : 0.0)) * rstd[st];
        sb += g;
      }
      if (dw) dw[i] = static_cast<T>(accumulate ? dw[i] + sw : sw);
      if (db) db[i] = static_cast<T>(accumulate ? db[i] + sb : sb);
    }
  }
}

template <class T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

void check_param(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  check_shape(op, name, t, {x.size(-1)});
  check_dtype(op, name, t, x.dtype());
  check_contiguous(op, name, t);
}

void check_stat(const char* op, const char* name, const Tensor& t, const Tensor& x, int64_t groups) {
  check_shape(op, name, t, {rows_of(x) * groups});
  check_dtype(op, name, t, wide_dtype(x.dtype()));
  check_contiguous(op, name, t);
}

// groups: >= 1, dividing C, RMSNorm only.
void check_groups(const char* op, NormKind kind, const Tensor& x, int64_t groups) {
  LCTX_CHECK(groups >= 1 && x.size(-1) % groups == 0, op, ": groups (", groups, ") must divide the channels C of x ",
             x.str());
  LCTX_CHECK(groups == 1 || kind == NormKind::rms, op, ": groups are for RMSNorm only");
}

}  // namespace

void norm_forward(const char* op, NormKind kind, Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x,
                  const Tensor& w, const Tensor& b, float eps, Stream s, int64_t groups) {
  check_float_input(op, "x", x);
  LCTX_CHECK(x.dim() >= 1, op, ": x must be [..., C], got ", x.str());
  check_groups(op, kind, x, groups);
  check_same_device(op, {&x, &out, &mean, &rstd, &w, &b});
  check_param(op, "w", w, x);
  if (b.defined()) check_param(op, "b", b, x);
  check_like(op, "out", out, x);
  check_stat(op, "rstd", rstd, x, groups);
  if (kind == NormKind::layer) check_stat(op, "mean", mean, x, groups);
  LCTX_CHECK(eps >= 0.0f, op, ": eps must be >= 0, got ", eps);
  if (x.device().is_cuda() && groups > 1)
    return LCTX_OPS_CUDA(op, x, rms_groups_forward_cuda(out, rstd, x, w, eps, groups, s));
  if (x.device().is_cuda()) return LCTX_OPS_CUDA(op, x, cuda::norm_forward(kind, out, mean, rstd, x, w, b, eps, s));
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op, [&] {
    cpu_forward<scalar_t>(kind, out.data<scalar_t>(), ptr_or_null<scalar_t>(mean), rstd.data<scalar_t>(),
                          x.data<scalar_t>(), w.data<scalar_t>(), ptr_or_null<scalar_t>(b), rows_of(x) * groups,
                          x.size(-1) / groups, eps, groups);
  });
}

void norm_backward(const char* op, NormKind kind, Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout,
                   const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, GradMode mode,
                   Stream s, int64_t groups) {
  check_float_input(op, "x", x);
  LCTX_CHECK(x.dim() >= 1, op, ": x must be [..., C], got ", x.str());
  check_groups(op, kind, x, groups);
  check_same_device(op, {&x, &dout, &dx, &dw, &db, &w, &mean, &rstd});
  check_like(op, "dout", dout, x);
  check_param(op, "w", w, x);
  check_stat(op, "rstd", rstd, x, groups);
  if (kind == NormKind::layer) check_stat(op, "mean", mean, x, groups);
  if (dx.defined()) {
    check_like(op, "dx", dx, x);
  }
  const DType gd = wide_dtype(x.dtype());
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"dw", &dw}, {"db", &db}}) {
    if (!t->defined()) continue;
    check_shape(op, name, *t, {x.size(-1)});
    check_dtype(op, name, *t, gd);
    check_contiguous(op, name, *t);
  }
  if (x.device().is_cuda() && groups > 1)
    return LCTX_OPS_CUDA(op, x, rms_groups_backward_cuda(dx, dw, dout, x, w, rstd, groups, mode, s));
  if (x.device().is_cuda())
    return LCTX_OPS_CUDA(op, x, cuda::norm_backward(kind, dx, dw, db, dout, x, w, mean, rstd, mode, s));
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op, [&] {
    cpu_backward<scalar_t>(kind, ptr_or_null<scalar_t>(dx), ptr_or_null<scalar_t>(dw), ptr_or_null<scalar_t>(db),
                           dout.data<scalar_t>(), x.data<scalar_t>(), w.data<scalar_t>(),
                           ptr_or_null<scalar_t>(mean), rstd.data<scalar_t>(), rows_of(x) * groups,
                           x.size(-1) / groups, mode == GradMode::accumulate, groups);
  });
}

}  // namespace lctx::ops::detail
