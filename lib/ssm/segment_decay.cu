// segment_decay on CUDA: one thread per (batch row, k), the sum over t in fp32 (adjacent threads
// read adjacent k: coalesced), then the M products.
#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ssm/segment_decay.h"
#include "ssm/ssm_math.h"

namespace lctx::ssm::detail {

namespace {

template <class T>
__global__ void segment_decay_kernel(float* __restrict__ a, const T* __restrict__ dt, const float* __restrict__ bias,
                                     const float* __restrict__ A, int64_t batch, int64_t len, int64_t K, int64_t M,
                                     int64_t sb, int64_t st, bool softplus) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= batch * K) return;
  const int64_t b = i / K, k = i % K;
  const float bk = bias ? bias[k] : 0.0f;
  float sum = 0.0f;
  for (int64_t t = 0; t < len; ++t) {
    const float v = to_f32(dt[b * sb + t * st + k]) + bk;
    sum += softplus ? detail::softplus(v) : v;
  }
  for (int64_t m = 0; m < M; ++m) a[i * M + m] = expf(A[k * M + m] * sum);
}

}  // namespace

void segment_decay_cuda(Tensor& a, const Tensor& dt, const Tensor& dt_bias, const Tensor& A, Softplus softplus,
                        Stream s) {
  const int64_t batch = dt.size(0), K = dt.size(2), M = A.numel() / K;
  set_device(dt);
  LCTX_DISPATCH_CUDA_FLOAT(dt.dtype(), "segment_decay", [&] {
    segment_decay_kernel<<<grid_size(batch * K, 128), 128, 0, cuda_stream(s)>>>(
        a.data<float>(), static_cast<const scalar_t*>(dt.raw()), dt_bias.defined() ? dt_bias.data<float>() : nullptr,
        A.data<float>(), batch, dt.size(1), K, M, dt.strides()[0], dt.strides()[1], softplus == Softplus::on);
  });
  LCTX_CUDA_CHECK_LAUNCH("segment_decay_kernel");
}

}  // namespace lctx::ssm::detail
