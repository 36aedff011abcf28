#include "ops/adamw.h"

#include <cmath>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T, class P>
void cpu_adamw(P* param, T* master, T* m, T* v, const T* grad, int64_t n, const AdamWConfig& c, double step_size,
               double inv_sqrt_bc2, double grad_scale) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(grad[i]) * grad_scale;
    double p = static_cast<double>(master[i]) * (1.0 - static_cast<double>(c.lr) * c.weight_decay);
    const double mi = c.beta1 * static_cast<double>(m[i]) + (1.0 - c.beta1) * g;
    const double vi = c.beta2 * static_cast<double>(v[i]) + (1.0 - c.beta2) * g * g;
    p -= step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + c.eps);
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    master[i] = static_cast<T>(p);
    if (param) param[i] = static_cast<P>(master[i]);
  }
}

}  // namespace

void adamw_update(Tensor& param, Tensor& master, Tensor& m, Tensor& v, const Tensor& grad, const AdamWConfig& cfg,
                  int64_t step, float grad_scale, Stream s) {
  constexpr const char* op = "adamw_update";
  detail::check_float_input(op, "grad", grad);
  check_same_device(op, {&param, &master, &m, &v, &grad});
  const DType sd = wide_dtype(grad.dtype());
  for (const auto& [name, t] : {std::pair<const char*, Tensor*>{"master", &master}, {"m", &m}, {"v", &v}}) {
    LCTX_CHECK(t->defined(), op, ": ", name, " is undefined");
    check_shape(op, name, *t, grad.shape());
    check_dtype(op, name, *t, sd);
    check_contiguous(op, name, *t);
  }
  if (param.defined()) {
    detail::check_float_input(op, "param", param);
    check_shape(op, "param", param, grad.shape());
  }
  LCTX_CHECK(step >= 1, op, ": step must be >= 1 (1-based count of updates), got ", step);
  LCTX_CHECK(cfg.lr >= 0 && cfg.beta1 >= 0 && cfg.beta1 < 1 && cfg.beta2 >= 0 && cfg.beta2 < 1 && cfg.eps >= 0,
             op, ": invalid config lr=", cfg.lr, " beta1=", cfg.beta1, " beta2=", cfg.beta2, " eps=", cfg.eps);
  const double bc1 = 1.0 - std::pow(static_cast<double>(cfg.beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(cfg.beta2), static_cast<double>(step));
  const double step_size = cfg.lr / bc1, inv_sqrt_bc2 = 1.0 / std::sqrt(bc2);
  if (grad.device().is_cuda()) {
    const cuda::AdamWScalars a{cfg.lr,     cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, grad_scale,
                               static_cast<float>(step_size), static_cast<float>(inv_sqrt_bc2)};
    return LCTX_OPS_CUDA(op, grad, cuda::adamw(param, master, m, v, grad, a, s));
  }
  LCTX_DISPATCH_CPU_FLOAT(grad.dtype(), op, [&] {
    using T = scalar_t;
    const DType pd = param.defined() ? param.dtype() : sd;
    LCTX_DISPATCH_CPU_FLOAT(pd, op, [&] {
      cpu_adamw<T, scalar_t>(param.defined() ? param.data<scalar_t>() : nullptr, master.data<T>(), m.data<T>(),
                             v.data<T>(), grad.data<T>(), grad.numel(), cfg, step_size, inv_sqrt_bc2, grad_scale);
    });
  });
}

}  // namespace lctx::ops
