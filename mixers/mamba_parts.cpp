#include "mixers/mamba_parts.h"

#include <algorithm>
#include <cmath>

#include "core/rng.h"
#include "ops/linear.h"
#include "ops/negative_exp.h"
#include "ssm/segment_decay.h"

namespace lctx::mixers::mamba {

namespace {

// The Mamba paper's dt range.
constexpr double kDtMin = 1e-3, kDtMax = 1e-1, kDtFloor = 1e-4;

}  // namespace

void init_dt_bias(Tensor& master, const InitContext& ctx) {
  rng_uniform(master, ctx.seed, ctx.offset, std::log(kDtMin), std::log(kDtMax));
  std::vector<double> v = master.to_vector();
  for (double& x : v) {
    const double dt = std::max(std::exp(x), kDtFloor);
    x = dt + std::log(-std::expm1(-dt));
  }
  master.copy_from(Tensor::from_vector(master.shape(), v, master.dtype()));
}

Tensor project(const Tensor& x, const Param& w, int64_t begin, int64_t n) {
  Shape shape = x.shape();
  shape.back() = n;
  Tensor y = Tensor::empty(shape, x.dtype(), x.device());
  ops::linear_forward(y, x, w.compute.slice(0, begin, begin + n), Tensor());
  return y;
}

void project_backward(Tensor& dx, const Param& w, int64_t begin, int64_t n, const Tensor& dy, const Tensor& x) {
  Tensor dxp = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = w.grad.slice(0, begin, begin + n), no_bias;
  ops::linear_backward(dxp, dw, no_bias, dy, x, w.compute.slice(0, begin, begin + n), GradMode::overwrite);
  dx.add_from(dxp);
}


Tensor wide_zeros_like(const Tensor& t) {
  return t.defined() ? Tensor::zeros(t.shape(), wide_dtype(t.dtype()), t.device()) : Tensor();
}

Tensor negative_exp(const Tensor& a_log) {
  Tensor A = Tensor::empty(a_log.shape(), wide_dtype(a_log.dtype()), a_log.device());
  ops::negative_exp_forward(A, a_log);
  return A;
}

Tensor a_log_grad(const Tensor& dA, const Tensor& A, DType grad_dtype) {
  Tensor g = Tensor::empty(A.shape(), grad_dtype, A.device());
  ops::negative_exp_backward(g, dA, A);
  return g;
}

Tensor segment_decay(const Tensor& dt_raw, const Tensor& dt_bias, const Tensor& A, const dist::Segment& seg) {
  return ssm::segment_decay(rows(dt_raw, seg), dt_bias, A, ssm::Softplus::on);
}

}  // namespace lctx::mixers::mamba
