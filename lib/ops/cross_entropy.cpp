#include "ops/cross_entropy.h"

#include <cmath>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
void cpu_cross_entropy(T* losses, T* mean_loss, T* dlogits, const T* logits, const int32_t* targets, int64_t n,
                       int64_t v, const CrossEntropyOptions& opts) {
  int64_t valid = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (targets[r] == opts.ignore_index) continue;
    LCTX_CHECK(targets[r] >= 0 && targets[r] < v, "cross_entropy: target ", targets[r], " of row ", r,
               " is outside [0, ", v, ") and not ignore_index ", opts.ignore_index);
    ++valid;
  }
  const double gscale = valid > 0 ? static_cast<double>(opts.loss_scale) / static_cast<double>(valid) : 0.0;
#pragma omp parallel for schedule(static) if (n * v > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const T* z = logits + r * v;
    const int32_t t = targets[r];
    const bool ignored = t == opts.ignore_index;
    double m = -INFINITY;
    for (int64_t j = 0; j < v; ++j) m = std::max(m, static_cast<double>(z[j]));
    double sum = 0;
    for (int64_t j = 0; j < v; ++j) sum += std::exp(z[j] - m);
    const double lse = m + std::log(sum);
    losses[r] = ignored ? T(0) : static_cast<T>(lse - z[t]);
    if (!dlogits) continue;
    T* d = dlogits + r * v;
    for (int64_t j = 0; j < v; ++j)
      d[j] = ignored ? T(0) : static_cast<T>(gscale * (std::exp(z[j] - lse) - (j == t ? 1.0 : 0.0)));
  }
  double total = 0;
  for (int64_t r = 0; r < n; ++r) total += losses[r];
  *mean_loss = static_cast<T>(valid > 0 ? total / static_cast<double>(valid) : 0.0);
}

void cross_entropy(const char* op, Tensor& losses, Tensor& mean_loss, Tensor& dlogits, const Tensor& logits,
                   const Tensor& targets, const CrossEntropyOptions& opts, Stream s) {
  detail::check_float_input(op, "logits", logits);
  LCTX_CHECK(logits.dim() == 2, op, ": logits ", logits.str(), " must be [N, V]");
  check_same_device(op, {&losses, &mean_loss, &dlogits, &logits, &targets});
  const int64_t n = logits.size(0), v = logits.size(1);
  LCTX_CHECK(targets.defined(), op, ": targets is undefined");
  check_dtype(op, "targets", targets, DType::i32);
  check_shape(op, "targets", targets, {n});
  check_contiguous(op, "targets", targets);
  const DType gd = wide_dtype(logits.dtype());
  check_shape(op, "losses", losses, {n});
  check_dtype(op, "losses", losses, gd);
  check_contiguous(op, "losses", losses);
  LCTX_CHECK(mean_loss.defined() && mean_loss.numel() == 1, op, ": mean_loss ", mean_loss.str(),
             " must have one element");
  check_dtype(op, "mean_loss", mean_loss, gd);
  if (dlogits.defined()) {
    check_like(op, "dlogits", dlogits, logits);
  }
  LCTX_CHECK(v > 0, op, ": logits ", logits.str(), " has an empty vocabulary");
  if (logits.device().is_cuda())
    return LCTX_OPS_CUDA(op, logits, cuda::cross_entropy(losses, mean_loss, dlogits, logits, targets, opts, s));
  LCTX_DISPATCH_CPU_FLOAT(logits.dtype(), op, [&] {
    cpu_cross_entropy(losses.data<scalar_t>(), mean_loss.data<scalar_t>(),
                      dlogits.defined() ? dlogits.data<scalar_t>() : nullptr, logits.data<scalar_t>(),
                      targets.data<int32_t>(), n, v, opts);
  });
}

}  // namespace

void cross_entropy_forward(Tensor& losses, Tensor& mean_loss, const Tensor& logits, const Tensor& targets,
                           const CrossEntropyOptions& opts, Stream s) {
  Tensor none;
  cross_entropy("cross_entropy_forward", losses, mean_loss, none, logits, targets, opts, s);
}

void cross_entropy_forward_backward(Tensor& losses, Tensor& mean_loss, Tensor& dlogits, const Tensor& logits,
                                    const Tensor& targets, const CrossEntropyOptions& opts, Stream s) {
  LCTX_CHECK(dlogits.defined(), "cross_entropy_forward_backward: dlogits is undefined");
  cross_entropy("cross_entropy_forward_backward", losses, mean_loss, dlogits, logits, targets, opts, s);
}

}  // namespace lctx::ops
