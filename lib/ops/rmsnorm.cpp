#include "ops/rmsnorm.h"

#include "ops/norm.h"

namespace lctx::ops {

void rmsnorm_forward(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps, Stream s) {
  Tensor none;
  detail::norm_forward("rmsnorm_forward", detail::NormKind::rms, out, none, rstd, x, w, Tensor(), eps, s);
}

void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                      const Tensor& rstd, GradMode mode, Stream s) {
  Tensor no_db;
  detail::norm_backward("rmsnorm_backward", detail::NormKind::rms, dx, dw, no_db, dout, x, w, Tensor(), rstd, mode,
                        s);
}

void rmsnorm_forward(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps, int64_t groups,
                     Stream s) {
  Tensor none;
  detail::norm_forward("rmsnorm_forward", detail::NormKind::rms, out, none, rstd, x, w, Tensor(), eps, s, groups);
}

void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                      const Tensor& rstd, GradMode mode, int64_t groups, Stream s) {
  Tensor no_db;
  detail::norm_backward("rmsnorm_backward", detail::NormKind::rms, dx, dw, no_db, dout, x, w, Tensor(), rstd, mode, s,
                        groups);
}

}  // namespace lctx::ops
