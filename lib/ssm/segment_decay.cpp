#include "ssm/segment_decay.h"

#include <cmath>

#include "ssm/ssm_math.h"

namespace lctx::ssm {

namespace {

template <class T>
void cpu_decay(Tensor& a, const Tensor& dt, const Tensor& dt_bias, const Tensor& A, Softplus softplus) {
  const int64_t batch = dt.size(0), T_ = dt.size(1), K = dt.size(2), M = A.numel() / K;
  const T* d = dt.data<T>();
  const T* bias = dt_bias.defined() ? dt_bias.data<T>() : nullptr;
  const T* rate = A.data<T>();
  T* out = a.data<T>();
  const int64_t sb = dt.strides()[0], st = dt.strides()[1];
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t k = 0; k < K; ++k) {
      double sum = 0;
      for (int64_t t = 0; t < T_; ++t) {
        const double v = static_cast<double>(d[b * sb + t * st + k]) + (bias ? static_cast<double>(bias[k]) : 0.0);
        sum += softplus == Softplus::on ? detail::softplus(v) : v;
      }
      for (int64_t m = 0; m < M; ++m) out[(b * K + k) * M + m] = static_cast<T>(std::exp(rate[k * M + m] * sum));
    }
}

}  // namespace

Tensor segment_decay(const Tensor& dt, const Tensor& dt_bias, const Tensor& A, Softplus softplus, Stream s) {
  const char* op = "segment_decay";
  LCTX_CHECK(dt.defined() && dt.dim() == 3, op, ": dt ", dt.defined() ? dt.str() : "(undefined)", " must be [B, T, K]");
  LCTX_CHECK(dt.strides()[2] == 1 || dt.size(2) <= 1, op, ": dt ", dt.str(), " needs a contiguous last dimension");
  const DType wide = wide_dtype(dt.dtype());
  const int64_t K = dt.size(2);
  LCTX_CHECK(A.defined() && (A.dim() == 1 || A.dim() == 2) && A.size(0) == K, op, ": A ",
             A.defined() ? A.str() : "(undefined)", " must be [K] or [K, M] with K = ", K, " (dt ", dt.str(), ")");
  check_dtype(op, "A", A, wide);
  check_contiguous(op, "A", A);
  if (dt_bias.defined()) {
    check_shape(op, "dt_bias", dt_bias, {K});
    check_dtype(op, "dt_bias", dt_bias, wide);
    check_contiguous(op, "dt_bias", dt_bias);
  }
  check_same_device(op, {&dt, &A, &dt_bias});
  Tensor a = Tensor::empty({dt.size(0), A.numel()}, wide, dt.device());
  if (a.numel() == 0) return a;
  if (dt.device().is_cuda()) {
#ifdef LCTX_HAVE_CUDA
    detail::segment_decay_cuda(a, dt, dt_bias, A, softplus, s);
    return a;
#else
    LCTX_FAIL(op, ": dt ", dt.str(), " is a CUDA tensor but lctx was built without CUDA (LCTX_CUDA=OFF)");
#endif
  }
  (void)s;
  LCTX_DISPATCH_CPU_FLOAT(dt.dtype(), op, [&] { cpu_decay<scalar_t>(a, dt, dt_bias, A, softplus); });
  return a;
}

}  // namespace lctx::ssm
