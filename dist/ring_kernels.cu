// CUDA half of merge_attention (see ring_kernels.h). The merge uses one warp
// per (b, h, i) row: lane 0's view of both lse values is read by every lane before lane 0
// writes the merged lse, and the D elements of the row are spread over the lanes.
#include "core/cuda_check.h"
#include "dist/ring_kernels.h"

namespace lctx::dist::detail {

namespace {

struct MergeArgs {
  float* o;
  float* lse;
  const float* ob;
  const float* lseb;
  int64_t B, n, H, D;
  int64_t so[3], sb[3], sl[2], sm[2];
};

__global__ void merge_kernel(MergeArgs a) {
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= a.B * a.H * a.n) return;
  const int64_t i = row % a.n, h = row / a.n % a.H, b = row / (a.n * a.H);
  float* l1p = a.lse + b * a.sl[0] + h * a.sl[1] + i;
  const float l1 = *l1p;
  const float l2 = a.lseb[b * a.sm[0] + h * a.sm[1] + i];
  const float m = fmaxf(l1, l2);
  if (m == -INFINITY) return;
  const float w1 = __expf(l1 - m), w2 = __expf(l2 - m), inv = 1.0f / (w1 + w2);
  float* o1 = a.o + b * a.so[0] + i * a.so[1] + h * a.so[2];
  const float* o2 = a.ob + b * a.sb[0] + i * a.sb[1] + h * a.sb[2];
  for (int64_t d = lane; d < a.D; d += 32) o1[d] = (w1 * o1[d] + w2 * o2[d]) * inv;
  __syncwarp();
  if (lane == 0) *l1p = m + logf(w1 + w2);
}


}  // namespace

void merge_attention_cuda(const Tensor& o_acc, const Tensor& lse_acc, const Tensor& o_blk, const Tensor& lse_blk,
                          Stream s) {
  LCTX_CHECK(o_acc.dtype() == DType::f32, "merge_attention: CUDA merges f32 partials, got ", o_acc.str());
  MergeArgs a{o_acc.data<float>(), lse_acc.data<float>(), o_blk.data<float>(), lse_blk.data<float>(),
              o_acc.size(0), o_acc.size(1), o_acc.size(2), o_acc.size(3), {}, {}, {}, {}};
  for (int d = 0; d < 3; ++d) {
    a.so[d] = o_acc.strides()[d];
    a.sb[d] = o_blk.strides()[d];
  }
  for (int d = 0; d < 2; ++d) {
    a.sl[d] = lse_acc.strides()[d];
    a.sm[d] = lse_blk.strides()[d];
  }
  const int64_t threads = a.B * a.H * a.n * 32;
  LCTX_CUDA_CHECK(cudaSetDevice(o_acc.device().index));
  merge_kernel<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, cuda_stream(s)>>>(a);
  LCTX_CUDA_CHECK_LAUNCH("merge_kernel");
}

}  // namespace lctx::dist::detail
