#include "ops/layernorm.h"

#include "ops/norm.h"

namespace lctx::ops {

void layernorm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w, const Tensor& b,
                       float eps, Stream s) {
  detail::norm_forward("layernorm_forward", detail::NormKind::layer, out, mean, rstd, x, w, b, eps, s);
}

void layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x, const Tensor& w,
                        const Tensor& mean, const Tensor& rstd, GradMode mode, Stream s) {
  detail::norm_backward("layernorm_backward", detail::NormKind::layer, dx, dw, db, dout, x, w, mean, rstd, mode, s);
}

}  // namespace lctx::ops
