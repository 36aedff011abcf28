// Strided attention's CUDA kernels (strided_attention.h): the fp32 log-sum-exp merge of the
// window part (in the output dtype) and the strided part (fp32) (one warp per output row), and the backward's lse in the strided
// part's residue-major head order. The CPU loops they mirror are in strided_attention.cpp.
#include <cuda_runtime.h>

#include <math_constants.h>

#include <algorithm>

#include "attn/strided_attention.h"
#include "core/cuda_check.h"
#include "core/cuda_types.cuh"

namespace lctx::attn {

namespace {

template <class T>
__global__ void strided_merge_kernel(const T* ow, const float* lw, const float* os, const float* ls, int64_t B,
                                     int64_t S, int64_t Sp, int64_t H, int D, int64_t s, int64_t front, T* o,
                                     float* lse) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = B * S * H;
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const int64_t b = row / (S * H), pos = row / H % S, h = row % H, pp = pos + front;
    const float a = lw[(b * H + h) * Sp + pp], c = ls[(b * s * H + pp % s * H + h) * (Sp / s) + pp / s];
    const float m = fmaxf(a, c);
    const float ea = m == -CUDART_INF_F ? 0.f : expf(a - m), ec = m == -CUDART_INF_F ? 0.f : expf(c - m);
    const float sum = ea + ec, inv = sum > 0.f ? 1.f / sum : 0.f;
    const T* x = ow + ((b * Sp + pp) * H + h) * D;
    const float* y = os + ((b * Sp + pp) * H + h) * D;
    T* out = o + row * D;
    for (int d = 2 * lane; d < D; d += 64) {
      const float2 yv = *reinterpret_cast<const float2*>(y + d);
      out[d] = from_f32<T>((ea * to_f32(x[d]) + ec * yv.x) * inv);
      out[d + 1] = from_f32<T>((ea * to_f32(x[d + 1]) + ec * yv.y) * inv);
    }
    if (lane == 0) lse[(b * H + h) * S + pos] = sum > 0.f ? m + logf(sum) : -CUDART_INF_F;
  }
}

__global__ void strided_lse_gather_kernel(const float* lse, int64_t B, int64_t H, int64_t S, int64_t s,
                                          int64_t front, int64_t n, float* ls) {
  const int64_t total = B * s * H * n;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / (s * H * n), r = e / (H * n) % s, h = e / n % H, t = e % n, pos = t * s + r - front;
    ls[e] = pos >= 0 && pos < S ? lse[(b * H + h) * S + pos] : CUDART_INF_F;  // padded rows: P = 0
  }
}

unsigned grid_for(int64_t threads) { return static_cast<unsigned>(std::min<int64_t>((threads + 255) / 256, 4096)); }

}  // namespace

void detail::strided_merge_cuda(const Tensor& ow, const Tensor& lw, const Tensor& os, const Tensor& ls, int64_t stride,
                                int64_t front, Tensor& o, Tensor& lse, Stream s) {
  const char* op = "strided_attention_forward";
  check_dtype(op, "window output", ow, o.dtype());
  for (const Tensor* t : {&lw, &os, &ls}) check_dtype(op, "partial output", *t, DType::f32);
  check_dtype(op, "lse", lse, DType::f32);
  const int64_t B = o.size(0), S = o.size(1), H = o.size(2), D = o.size(3), Sp = ow.size(1);
  LCTX_CHECK(D % 2 == 0, op, ": head_dim ", D, " must be even");
  const unsigned grid = grid_for(B * S * H * 32);
  const cudaStream_t st = cuda_stream(s);
  if (B * S * H == 0) return;
  if (o.dtype() == DType::bf16)
    strided_merge_kernel<__nv_bfloat16><<<grid, 256, 0, st>>>(static_cast<const __nv_bfloat16*>(ow.raw()), lw.data<float>(), os.data<float>(),
        ls.data<float>(), B, S, Sp, H, static_cast<int>(D), stride, front, static_cast<__nv_bfloat16*>(o.raw()), lse.data<float>());
  else
    strided_merge_kernel<__half><<<grid, 256, 0, st>>>(static_cast<const __half*>(ow.raw()), lw.data<float>(), os.data<float>(),
        ls.data<float>(), B, S, Sp, H, static_cast<int>(D), stride, front, static_cast<__half*>(o.raw()), lse.data<float>());
  LCTX_CUDA_CHECK_LAUNCH("strided_merge_kernel");
}

void detail::strided_lse_gather_cuda(const Tensor& lse, int64_t stride, int64_t front, Tensor& ls, Stream s) {
  check_dtype("strided_attention_backward", "lse", lse, DType::f32);
  const int64_t B = lse.size(0), H = lse.size(1), S = lse.size(2), n = ls.size(2);
  if (ls.numel() == 0) return;
  strided_lse_gather_kernel<<<grid_for(ls.numel()), 256, 0, cuda_stream(s)>>>(lse.data<float>(), B, H, S, stride,
                                                                                front, n, ls.data<float>());
  LCTX_CUDA_CHECK_LAUNCH("strided_lse_gather_kernel");
}

}  // namespace lctx::attn
