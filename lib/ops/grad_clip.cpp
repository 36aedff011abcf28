#include "ops/grad_clip.h"

#include <algorithm>
#include <cmath>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

void check_grads(const char* op, std::span<const Tensor> grads) {
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string name = "grads[" + std::to_string(i) + "]";
    detail::check_float_input(op, name.c_str(), grads[i]);
    LCTX_CHECK(grads[i].device() == grads[0].device(), op, ": ", name, " ", grads[i].str(), " is not on ",
               grads[0].device().str(), " like grads[0]");
  }
}

// Sum over 64 fixed chunks, then the chunks in order: independent of the thread count.
template <class T>
double cpu_sum_squares(const T* p, int64_t n) {
  constexpr int64_t kChunks = 64;
  const int64_t len = (n + kChunks - 1) / kChunks;
  double part[kChunks] = {};
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t c = 0; c < kChunks; ++c)
    for (int64_t i = c * len; i < std::min(n, (c + 1) * len); ++i)
      part[c] += static_cast<double>(p[i]) * static_cast<double>(p[i]);
  double acc = 0;
  for (double v : part) acc += v;
  return acc;
}

template <class T>
void cpu_scale(T* p, int64_t n, double scale) {
  const T f = static_cast<T>(scale);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) p[i] *= f;
}

GradNorm norm_of(const char* op, std::span<const Tensor> grads, Stream s) {
  check_grads(op, grads);
  GradNorm r;
  if (grads.empty()) return r;
  double sum = 0;
  if (grads[0].device().is_cuda()) {
    sum = LCTX_OPS_CUDA(op, grads[0], cuda::sum_squares(grads, s));
  } else {
    for (const Tensor& g : grads)
      sum += LCTX_DISPATCH_CPU_FLOAT(g.dtype(), op, [&] { return cpu_sum_squares(g.data<scalar_t>(), g.numel()); });
  }
  r.norm = std::sqrt(sum);
  r.finite = std::isfinite(r.norm);
  return r;
}

}  // namespace

GradNorm grad_norm(std::span<const Tensor> grads, Stream s) { return norm_of("grad_norm", grads, s); }

GradNorm clip_grad_norm(std::span<const Tensor> grads, double max_norm, Stream s) {
  constexpr const char* op = "clip_grad_norm";
  LCTX_CHECK(max_norm > 0, op, ": max_norm must be positive, got ", max_norm);
  GradNorm r = norm_of(op, grads, s);
  if (!r.finite || r.norm <= max_norm) return r;
  r.clipped = true;
  r.scale = max_norm / (r.norm + 1e-6);
  for (const Tensor& g : grads) {
    if (g.device().is_cuda()) {
      LCTX_OPS_CUDA(op, g, cuda::scale(g, r.scale, s));
      continue;
    }
    LCTX_DISPATCH_CPU_FLOAT(g.dtype(), op, [&] { cpu_scale(g.data<scalar_t>(), g.numel(), r.scale); });
  }
  return r;
}

}  // namespace lctx::ops
