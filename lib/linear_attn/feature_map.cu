// Feature maps (feature_map.h) on CUDA, fp32 math for f32/bf16/f16 inputs. Elementwise maps: one
// thread per element of x's (strided) rows. FAVOR+: the exponents' products x W^T (and, in the
// backward, G W) are ops::matmul in f32 (x widened once; fp32 cuBLASLt, no TF32), around warp-
// per-row kernels for |x~|^2, the stabiliser (per-row max / given / max over a sequence) and exp:
//   forward   u = scale x W^T  ->  phi = exp(u - |x~|^2/2 - c) / sqrt(m)
//   backward  g = dphi phi (in u's buffer), gsum, argmax  ->  dx = scale g W - scale gsum r
// with r = x~ for a given stabiliser and w_argmax for the per-row max, as on the CPU.
#include "core/cuda/launch.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"
#include "linear_attn/feature_map.h"
#include "ops/matmul.h"

namespace lctx::linear_attn::detail {

namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;

// Strides of x [B, S, H, D] (last dimension contiguous) and its sizes: element (row r, column d)
// of the row-major [B * S * H, D] view.
struct RowIndex {
  int64_t S, H, D, sb, ss, sh;
  __device__ int64_t offset(int64_t r, int64_t d) const { return r / (S * H) * sb + r / H % S * ss + r % H * sh + d; }
};

RowIndex row_index(const Tensor& x) {
  return {x.size(1), x.size(2), x.size(3), x.strides()[0], x.strides()[1], x.strides()[2]};
}

// Elementwise maps: y = phi(x) (dphi == nullptr) or y = dphi phi'(x), y contiguous.
template <class T>
__global__ void elementwise_kernel(T* __restrict__ y, const T* __restrict__ dphi, const T* __restrict__ x, RowIndex ix,
                                   int64_t n, FeatureKind kind) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_f32(x[ix.offset(i / ix.D, i % ix.D)]);
    float out;
    if (!dphi) {
      out = kind == FeatureKind::identity ? v : kind == FeatureKind::relu ? fmaxf(v, 0.0f) : v > 0 ? v + 1 : expf(v);
    } else {
      const float deriv = kind == FeatureKind::identity ? 1.0f
                          : v > 0                       ? 1.0f
                          : kind == FeatureKind::relu   ? 0.0f
                                                        : expf(v);
      out = to_f32(dphi[i]) * deriv;
    }
    y[i] = from_f32<T>(out);
  }
}

// The FAVOR+ pieces of a row, computed by one warp: half = |x~|^2 / 2 and the stabiliser c,
// so that phi_i = exp(u_i - half - c) / sqrt(m) (u = scale x W^T); `imax` the first argmax of u.
struct RowStats {
  float half, c;
  int imax;
};

__device__ RowStats row_stats(const float* u, const float* xf, const float* stab, int64_t r, int m, int D, int64_t S,
                              int64_t H, float scale) {
  const int lane = threadIdx.x & 31;
  float sq = 0.0f;
  for (int d = lane; d < D; d += 32) sq += xf[r * D + d] * xf[r * D + d];
  const float half = 0.5f * scale * scale * warp_sum(sq);
  float best = -INFINITY;
  int bi = m;
  for (int i = lane; i < m; i += 32)
    if (u[r * m + i] > best) best = u[r * m + i], bi = i;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ob > best || (ob == best && oi < bi)) best = ob, bi = oi;
  }
  const float c = stab ? stab[r / (S * H) * H + r % H] : best - half;
  return {half, c, bi};
}

template <class T>
__global__ void favor_forward_kernel(T* __restrict__ phi, const float* __restrict__ u, const float* __restrict__ xf,
                                     const float* __restrict__ stab, int64_t rows, int m, int D, int64_t S, int64_t H,
                                     float scale, float norm) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32; r < rows; r += int64_t(gridDim.x) * kWarps) {
    const RowStats st = row_stats(u, xf, stab, r, m, D, S, H, scale);
    for (int i = lane; i < m; i += 32) phi[r * m + i] = from_f32<T>(expf(u[r * m + i] - st.half - st.c) * norm);
  }
}

// u -> g = dphi phi in place; gsum[r] = sum_i g_i, imax[r] = argmax_i u_i.
template <class T>
__global__ void favor_grad_kernel(float* __restrict__ u, float* __restrict__ gsum, int* __restrict__ imax,
                                  const T* __restrict__ dphi, const float* __restrict__ xf,
                                  const float* __restrict__ stab, int64_t rows, int m, int D, int64_t S, int64_t H,
                                  float scale, float norm) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32; r < rows; r += int64_t(gridDim.x) * kWarps) {
    const RowStats st = row_stats(u, xf, stab, r, m, D, S, H, scale);
    __syncwarp();  // every lane has read u before any overwrites it
    float acc = 0.0f;
    for (int i = lane; i < m; i += 32) {
      const float g = to_f32(dphi[r * m + i]) * expf(u[r * m + i] - st.half - st.c) * norm;
      u[r * m + i] = g;
      acc += g;
    }
    acc = warp_sum(acc);
    if (lane == 0) gsum[r] = acc, imax[r] = st.imax;
  }
}

// dx = dxf - scale gsum r, r = x~ (given stabiliser) or w_imax (per-row max).
template <class T>
__global__ void favor_dx_kernel(T* __restrict__ dx, const float* __restrict__ dxf, const float* __restrict__ gsum,
                                const int* __restrict__ imax, const float* __restrict__ xf, const float* __restrict__ w,
                                int64_t n, int D, float scale, bool given) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / D;
    const float ref = given ? scale * xf[i] : w[imax[r] * int64_t(D) + i % D];
    dx[i] = from_f32<T>(dxf[i] - scale * gsum[r] * ref);
  }
}

// rowmax[r] = max_i u_i - half.
__global__ void favor_row_max_kernel(float* __restrict__ rowmax, const float* __restrict__ u,
                                     const float* __restrict__ xf, int64_t rows, int m, int D, float scale) {
  for (int64_t r = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32; r < rows; r += int64_t(gridDim.x) * kWarps) {
    const RowStats st = row_stats(u, xf, nullptr, r, m, D, 1, 1, scale);
    if ((threadIdx.x & 31) == 0) rowmax[r] = st.c;
  }
}

// out[b, h] = max over s of rowmax[(b S + s) H + h], rounded up: one block per (b, h).
__global__ void favor_seq_max_kernel(float* __restrict__ out, const float* __restrict__ rowmax, int64_t S, int64_t H) {
  __shared__ float scratch[32];
  const int64_t bh = blockIdx.x, b = bh / H, h = bh % H;
  float mx = -INFINITY;
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x) mx = fmaxf(mx, rowmax[(b * S + s) * H + h]);
  mx = block_max(mx, scratch);
  if (threadIdx.x == 0) out[bh] = ceilf(mx);
}

// x as a contiguous f32 [rows, D] matrix (one copy at most).
Tensor rows_f32(const Tensor& x, Stream s) {
  const Tensor c = x.dtype() == DType::f32 ? x.contiguous(s) : x.to(DType::f32, s);
  return c.view({x.size(0) * x.size(1) * x.size(2), x.size(3)});
}

// u = scale x W^T: [rows, m] f32.
Tensor exponents(const Tensor& xf, const FeatureMap& fm, float scale, Stream s) {
  Tensor u = Tensor::empty({xf.size(0), fm.projection.size(0)}, DType::f32, xf.device());
  ops::matmul(u, xf, fm.projection, ops::Trans::none, ops::Trans::transpose, scale, 0.0f, s);
  return u;
}

int warp_grid(int64_t rows) { return grid_size(rows, kWarps); }

const float* ptr_or_null(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }

}  // namespace

void feature_map_forward_cuda(Tensor& phi, const Tensor& x, const FeatureMap& fm, const Tensor& stab, double scale,
                              Stream s) {
  const int64_t rows = x.size(0) * x.size(1) * x.size(2), D = x.size(3);
  if (rows == 0 || D == 0) return;
  set_device(x);
  if (fm.kind != FeatureKind::favor) {
    LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "feature_map_forward", [&] {
      elementwise_kernel<<<grid_size(rows * D, kThreads), kThreads, 0, cuda_stream(s)>>>(
          static_cast<scalar_t*>(phi.raw()), static_cast<const scalar_t*>(nullptr),
          static_cast<const scalar_t*>(x.raw()), row_index(x), rows * D, fm.kind);
    });
    LCTX_CUDA_CHECK_LAUNCH("feature_map elementwise_kernel");
    return;
  }
  const Tensor xf = rows_f32(x, s), u = exponents(xf, fm, static_cast<float>(scale), s);
  const int m = static_cast<int>(fm.projection.size(0));
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "feature_map_forward", [&] {
    favor_forward_kernel<<<warp_grid(rows), kThreads, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(phi.raw()), u.data<float>(), xf.data<float>(), ptr_or_null(stab), rows, m,
        static_cast<int>(D), x.size(1), x.size(2), static_cast<float>(scale), 1.0f / sqrtf(static_cast<float>(m)));
  });
  LCTX_CUDA_CHECK_LAUNCH("favor_forward_kernel");
}

void feature_map_backward_cuda(Tensor& dx, const Tensor& x, const Tensor& dphi, const FeatureMap& fm,
                               const Tensor& stab, double scale, Stream s) {
  const int64_t rows = x.size(0) * x.size(1) * x.size(2), D = x.size(3);
  if (rows == 0 || D == 0) return;
  set_device(x);
  if (fm.kind != FeatureKind::favor) {
    LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "feature_map_backward", [&] {
      elementwise_kernel<<<grid_size(rows * D, kThreads), kThreads, 0, cuda_stream(s)>>>(
          static_cast<scalar_t*>(dx.raw()), static_cast<const scalar_t*>(dphi.raw()),
          static_cast<const scalar_t*>(x.raw()), row_index(x), rows * D, fm.kind);
    });
    LCTX_CUDA_CHECK_LAUNCH("feature_map elementwise_kernel");
    return;
  }
  const float sc = static_cast<float>(scale);
  const Tensor xf = rows_f32(x, s);
  Tensor g = exponents(xf, fm, sc, s);
  const int m = static_cast<int>(fm.projection.size(0));
  Tensor gsum = Tensor::empty({rows}, DType::f32, x.device()), imax = Tensor::empty({rows}, DType::i32, x.device());
  Tensor dxf = Tensor::empty({rows, D}, DType::f32, x.device());
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "feature_map_backward", [&] {
    favor_grad_kernel<<<warp_grid(rows), kThreads, 0, cuda_stream(s)>>>(
        g.data<float>(), gsum.data<float>(), imax.data<int32_t>(), static_cast<const scalar_t*>(dphi.raw()),
        xf.data<float>(), ptr_or_null(stab), rows, m, static_cast<int>(D), x.size(1), x.size(2), sc,
        1.0f / sqrtf(static_cast<float>(m)));
    LCTX_CUDA_CHECK_LAUNCH("favor_grad_kernel");
    ops::matmul(dxf, g, fm.projection, ops::Trans::none, ops::Trans::none, sc, 0.0f, s);
    favor_dx_kernel<<<grid_size(rows * D, kThreads), kThreads, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(dx.raw()), dxf.data<float>(), gsum.data<float>(), imax.data<int32_t>(), xf.data<float>(),
        fm.projection.data<float>(), rows * D, static_cast<int>(D), sc, stab.defined());
    LCTX_CUDA_CHECK_LAUNCH("favor_dx_kernel");
  });
}

void favor_key_stabiliser_cuda(Tensor& out, const Tensor& k, const FeatureMap& fm, double scale, Stream s) {
  const int64_t S = k.size(1), H = k.size(2), rows = k.size(0) * S * H, D = k.size(3);
  set_device(k);
  if (S == 0) return out.fill(-INFINITY, s);
  const float sc = static_cast<float>(scale);
  const Tensor xf = rows_f32(k, s), u = exponents(xf, fm, sc, s);
  Tensor rowmax = Tensor::empty({rows}, DType::f32, k.device());
  favor_row_max_kernel<<<warp_grid(rows), kThreads, 0, cuda_stream(s)>>>(
      rowmax.data<float>(), u.data<float>(), xf.data<float>(), rows, static_cast<int>(fm.projection.size(0)),
      static_cast<int>(D), sc);
  LCTX_CUDA_CHECK_LAUNCH("favor_row_max_kernel");
  favor_seq_max_kernel<<<static_cast<unsigned>(out.numel()), kThreads, 0, cuda_stream(s)>>>(out.data<float>(),
                                                                                            rowmax.data<float>(), S, H);
  LCTX_CUDA_CHECK_LAUNCH("favor_seq_max_kernel");
}

}  // namespace lctx::linear_attn::detail
