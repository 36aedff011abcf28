#include <cmath>

#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

struct RopeParams {
  int64_t s, h, d;
  bool per_batch;
  double log_theta;
  float sign;
};

// One block per (b, s) token: cos/sin of the D/2 angles go to shared memory once (double
// precision), then every head of the token is rotated with them.
template <class T>
__global__ void rope_kernel(T* out, const T* x, const int32_t* __restrict__ pos, RopeParams p) {
  extern __shared__ float cs[];  // [0, D/2): cos, [D/2, D): sin
  const int64_t bs = blockIdx.x, half = p.d / 2;
  const double ps = pos[p.per_batch ? bs : bs % p.s];
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const double a = ps * exp(-2.0 * static_cast<double>(i) / static_cast<double>(p.d) * p.log_theta);
    double sn, c;
    sincos(a, &sn, &c);
    cs[i] = static_cast<float>(c);
    cs[half + i] = p.sign * static_cast<float>(sn);
  }
  __syncthreads();
  const int64_t base = bs * p.h * p.d;
  for (int64_t j = threadIdx.x; j < p.h * half; j += blockDim.x) {
    const int64_t hh = j / half, i = j % half;
    const int64_t o = base + hh * p.d + i;
    const float x1 = to_f32(x[o]), x2 = to_f32(x[o + half]);
    const float c = cs[i], sn = cs[half + i];
    out[o] = from_f32<T>(x1 * c - x2 * sn);
    out[o + half] = from_f32<T>(x1 * sn + x2 * c);
  }
}

}  // namespace

void rope(Tensor& out, const Tensor& x, const Tensor& positions, double theta, int sign, Stream s) {
  const int64_t b = x.size(0), sq = x.size(1), h = x.size(2), d = x.size(3);
  if (x.numel() == 0) return;
  set_device(x);
  const RopeParams p{sq, h, d, positions.dim() == 2, std::log(theta), static_cast<float>(sign)};
  const int threads = row_threads(h * d / 2, 256);
  const size_t smem = static_cast<size_t>(d) * sizeof(float);
  LCTX_CHECK(smem <= 48 * 1024, "rope: head_dim ", d, " too large");
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "rope", [&] {
    rope_kernel<<<static_cast<unsigned>(b * sq), threads, smem, cuda_stream(s)>>>(
        static_cast<scalar_t*>(out.raw()), static_cast<const scalar_t*>(x.raw()), positions.data<int32_t>(), p);
  });
  LCTX_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace lctx::ops::cuda
