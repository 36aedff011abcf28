#include "core/rng.h"

#include <cmath>

#include "core/philox.h"

namespace lctx {

namespace {

using detail::Distribution;

template <class T>
void cpu_fill(Tensor& t, Distribution dist, uint64_t seed, uint64_t offset, double a, double b) {
  const StridedLayout l = detail::layout_of(t);
  T* p = t.data<T>();
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const double r = dist == Distribution::uniform ? philox::uniform(seed, offset + i) * (b - a) + a
                                                   : philox::normal(seed, offset + i) * b + a;
    p[l.offset(i)] = convert<T>(r);
  }
}

void fill(Tensor& t, Distribution dist, uint64_t seed, uint64_t offset, double a, double b, Stream s) {
  if (t.numel() == 0) return;
  const DType dt = t.dtype();
  LCTX_CHECK(dt == DType::f64 || dt == DType::f32 || dt == DType::bf16 || dt == DType::f16, "rng fill: ",
             t.str(), " is not a floating-point tensor");
  if (t.device().is_cuda()) {
    detail::cuda_rng_fill(t, dist, seed, offset, a, b, s);
    return;
  }
  switch (t.dtype()) {
    case DType::f64: cpu_fill<double>(t, dist, seed, offset, a, b); break;
    case DType::f32: cpu_fill<float>(t, dist, seed, offset, a, b); break;
    case DType::bf16: cpu_fill<bf16>(t, dist, seed, offset, a, b); break;
    case DType::f16: cpu_fill<f16>(t, dist, seed, offset, a, b); break;
    default: break;
  }
}

}  // namespace

void rng_uniform(Tensor& t, uint64_t seed, uint64_t offset, double low, double high, Stream s) {
  fill(t, Distribution::uniform, seed, offset, low, high, s);
}

void rng_normal(Tensor& t, uint64_t seed, uint64_t offset, double mean, double std, Stream s) {
  fill(t, Distribution::normal, seed, offset, mean, std, s);
}

#ifndef LCTX_HAVE_CUDA
void detail::cuda_rng_fill(Tensor& t, Distribution, uint64_t, uint64_t, double, double, Stream) {
  LCTX_FAIL("rng fill of ", t.str(), ": lctx was built without CUDA");
}
#endif

}  // namespace lctx
