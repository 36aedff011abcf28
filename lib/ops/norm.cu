// CUDA RMSNorm / LayerNorm: one block per row, fp32 statistics, the forward keeps the row in
// registers when it fits (else, like the backward, re-reads it from cache for each pass);
// LayerNorm subtracts the mean before squaring, so no E[x^2] - mean^2 cancellation.
// Rows whose length is a multiple of 16 bytes / sizeof(T) and whose pointers are 16-byte
// aligned use 16-byte vector loads (N = 16 / sizeof(T)); others take the N = 1 instantiation.
// Weight and bias gradients are column reductions (cuda::col_reduce, deterministic). Grouped
// RMSNorm (norm.h) runs the same kernels on rows of one group (each reading its slice of w); its
// weight gradient, whose statistics change along a row, has a two-pass column reduction here.
#include "core/cuda/launch.cuh"
#include "core/cuda/pack.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

struct NormParams {
  bool layer;
  int64_t rows, cols;  // grouped: rows * groups rows of C / groups
  float eps;
  float* mean;
  float* rstd;
  int64_t groups = 1;  // row r reads w[(r % groups) * cols, +cols) (kernels instantiated with Grouped)
};

// Packs of N elements per thread kept in registers when a row fits (blockDim * N * kCached
// elements, e.g. 8192 bf16 columns with 256 threads): the row is then read from memory once.
// Longer rows are re-read for each pass (from L1/L2).
constexpr int kCached = 4;

// Grouped is a template flag so that the plain kernels keep their registers (the forward runs
// up to 1024 threads per block).
template <class T, int N, bool Grouped>
__global__ void norm_forward_kernel(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w,
                                    const T* __restrict__ b, NormParams p) {
  __shared__ float scratch[32];
  const int64_t c = p.cols;
  const float inv_c = 1.0f / static_cast<float>(c);
  const int64_t stride = int64_t(blockDim.x) * N;
  const bool cached = c <= stride * kCached;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const T* xr = x + r * c;
    const T* wr = Grouped ? w + r % p.groups * c : w;
    float v[kCached][N];
    if (cached) {
#pragma unroll
      for (int k = 0; k < kCached; ++k) {
        const int64_t i = threadIdx.x * N + k * stride;
        if (i < c) load_f32<N>(xr + i, v[k]);
      }
    }
    // Calls f(f32 values of the pack at column i) for each of this thread's packs.
    auto for_packs = [&](auto&& f) {
      if (cached) {
#pragma unroll
        for (int k = 0; k < kCached; ++k) {
          const int64_t i = threadIdx.x * N + k * stride;
          if (i < c) f(i, v[k]);
        }
      } else {
        for (int64_t i = threadIdx.x * N; i < c; i += stride) {
          float f32[N];
          load_f32<N>(xr + i, f32);
          f(i, f32);
        }
      }
    };
    float mu = 0.0f;
    if (p.layer) {
      float s = 0.0f;
      for_packs([&](int64_t, const float(&f)[N]) {
#pragma unroll
        for (int j = 0; j < N; ++j) s += f[j];
      });
      mu = block_sum(s, scratch) * inv_c;
    }
    float ss = 0.0f;
    for_packs([&](int64_t, const float(&f)[N]) {
#pragma unroll
      for (int j = 0; j < N; ++j) ss += (f[j] - mu) * (f[j] - mu);
    });
    const float rs = rsqrtf(block_sum(ss, scratch) * inv_c + p.eps);
    T* orow = out + r * c;
    for_packs([&](int64_t i, const float(&f)[N]) {
      float y[N], wf[N], bf[N] = {};
      load_f32<N>(wr + i, wf);
      if (b) load_f32<N>(b + i, bf);
#pragma unroll
      for (int j = 0; j < N; ++j) y[j] = (f[j] - mu) * rs * wf[j] + bf[j];
      store_f32<N>(orow + i, y);
    });
    if (threadIdx.x == 0) {
      if (p.mean) p.mean[r] = mu;
      p.rstd[r] = rs;
    }
  }
}

template <class T, int N, bool Grouped>
__global__ void norm_backward_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                                     const T* __restrict__ w, NormParams p) {
  __shared__ float scratch[32];
  const int64_t c = p.cols;
  const float inv_c = 1.0f / static_cast<float>(c);
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const T* xr = x + r * c;
    const T* gr = dy + r * c;
    const T* wr = Grouped ? w + r % p.groups * c : w;
    const float mu = p.layer ? p.mean[r] : 0.0f, rs = p.rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t i = threadIdx.x * N; i < c; i += blockDim.x * N) {
      float f[N], g[N], wf[N];
      load_f32<N>(xr + i, f);
      load_f32<N>(gr + i, g);
      load_f32<N>(wr + i, wf);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const float gw = g[j] * wf[j];
        sg += gw;
        sgx += gw * (f[j] - mu) * rs;
      }
    }
    sg = p.layer ? block_sum(sg, scratch) * inv_c : 0.0f;
    sgx = block_sum(sgx, scratch) * inv_c;
    for (int64_t i = threadIdx.x * N; i < c; i += blockDim.x * N) {
      float f[N], g[N], wf[N];
      load_f32<N>(xr + i, f);
      load_f32<N>(gr + i, g);
      load_f32<N>(wr + i, wf);
#pragma unroll
      for (int j = 0; j < N; ++j) f[j] = rs * (g[j] * wf[j] - sg - (f[j] - mu) * rs * sgx);
      store_f32<N>(dx + r * c + i, f);
    }
  }
}

// One block per row, at most 2^20 blocks (the kernels loop over the rest).
int norm_grid(int64_t rows) { return grid_size(rows, 1, 1 << 20); }

template <class T>
const T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.raw()) : nullptr;
}

// The forward and the dx backward on rows of `cols` (grouped: p.rows = rows * groups).
void launch_forward(const NormParams& p, Tensor& out, const Tensor& x, const Tensor& w, const Tensor& b, Stream s) {
  if (p.rows == 0) return;
  set_device(x);
  const int64_t cols = p.cols;
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "norm_forward", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    const bool vec = packs_fit<scalar_t, V>(cols, {&out, &x, &w, &b});
    const int64_t packs = vec ? cols / V : cols;
    // The row in registers up to 1024 * kCached packs; grouped rows are short (and their
    // kernel may need more than 64 registers a thread): at most 256 threads.
    const int threads = row_threads((packs + kCached - 1) / kCached, p.groups > 1 ? 256 : 1024);
    auto launch = [&](auto kernel) {
      kernel<<<norm_grid(p.rows), threads, 0, cuda_stream(s)>>>(static_cast<scalar_t*>(out.raw()), ptr<scalar_t>(x),
                                                                  ptr<scalar_t>(w), ptr<scalar_t>(b), p);
    };
    if (p.groups > 1) {
      if (vec) launch(norm_forward_kernel<scalar_t, V, true>);
      else launch(norm_forward_kernel<scalar_t, 1, true>);
    } else {
      if (vec) launch(norm_forward_kernel<scalar_t, V, false>);
      else launch(norm_forward_kernel<scalar_t, 1, false>);
    }
  });
  LCTX_CUDA_CHECK_LAUNCH("norm_forward_kernel");
}

void launch_backward(const NormParams& p, Tensor& dx, const Tensor& dout, const Tensor& x, const Tensor& w, Stream s) {
  if (p.rows == 0) return;
  set_device(x);
  const int64_t cols = p.cols;
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "norm_backward", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    const bool vec = packs_fit<scalar_t, V>(cols, {&dx, &dout, &x, &w});
    const int threads = row_threads(vec ? cols / V : cols, 256);
    auto launch = [&](auto kernel) {
      kernel<<<norm_grid(p.rows), threads, 0, cuda_stream(s)>>>(static_cast<scalar_t*>(dx.raw()), ptr<scalar_t>(dout),
                                                                  ptr<scalar_t>(x), ptr<scalar_t>(w), p);
    };
    if (p.groups > 1) {
      if (vec) launch(norm_backward_kernel<scalar_t, V, true>);
      else launch(norm_backward_kernel<scalar_t, 1, true>);
    } else {
      if (vec) launch(norm_backward_kernel<scalar_t, V, false>);
      else launch(norm_backward_kernel<scalar_t, 1, false>);
    }
  });
  LCTX_CUDA_CHECK_LAUNCH("norm_backward_kernel");
}

// Grouped RMSNorm's weight gradient, pass 1: part[chunk, c] = sum over the chunk's kRowChunk rows
// of dy[r, c] x[r, c] rstd[r * groups + c / cg] (a thread per column of a block's 128).
constexpr int kRowChunk = 256;

template <class T>
__global__ void group_dw_partial_kernel(float* __restrict__ part, const T* __restrict__ dy, const T* __restrict__ x,
                                        const float* __restrict__ rstd, int64_t rows, int64_t C, int64_t cg,
                                        int64_t groups) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const int64_t r0 = blockIdx.y * int64_t(kRowChunk), r1 = min(rows, r0 + kRowChunk);
  float acc = 0.0f;
  for (int64_t r = r0; r < r1; ++r) acc += to_f32(dy[r * C + c]) * to_f32(x[r * C + c]) * rstd[r * groups + c / cg];
  part[blockIdx.y * C + c] = acc;
}

// Pass 2: dw[c] (+)= the partials of column c in chunk order (deterministic).
__global__ void group_dw_sum_kernel(float* __restrict__ dw, const float* __restrict__ part, int64_t chunks, int64_t C,
                                    bool accumulate) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  float acc = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) acc += part[k * C + c];
  dw[c] = accumulate ? dw[c] + acc : acc;
}

}  // namespace

void norm_forward(detail::NormKind kind, Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                  const Tensor& b, float eps, Stream s) {
  const NormParams p{kind == detail::NormKind::layer, detail::rows_of(x), x.size(-1), eps,
                     mean.defined() ? mean.data<float>() : nullptr, rstd.data<float>()};
  launch_forward(p, out, x, w, b, s);
}

void norm_backward(detail::NormKind kind, Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x,
                   const Tensor& w, const Tensor& mean, const Tensor& rstd, GradMode mode, Stream s) {
  const int64_t rows = detail::rows_of(x), cols = x.size(-1);
  set_device(x);
  if (dx.defined()) {
    const NormParams p{kind == detail::NormKind::layer, rows, cols, 0.0f, mean.defined() ? mean.data<float>() : nullptr,
                       rstd.data<float>()};
    launch_backward(p, dx, dout, x, w, s);
  }
  const ColReduce wkind = kind == detail::NormKind::layer ? ColReduce::x_mean_rstd : ColReduce::x_rstd;
  if (dw.defined()) col_reduce(dw, wkind, dout, x, mean, rstd, rows, cols, mode, s);
  if (db.defined()) col_reduce(db, ColReduce::sum, dout, Tensor(), Tensor(), Tensor(), rows, cols, mode, s);
}

}  // namespace lctx::ops::cuda

namespace lctx::ops::detail {

void rms_groups_forward_cuda(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps, int64_t groups,
                             Stream s) {
  const cuda::NormParams p{false, rows_of(x) * groups, x.size(-1) / groups, eps, nullptr, rstd.data<float>(), groups};
  cuda::launch_forward(p, out, x, w, Tensor(), s);
}

void rms_groups_backward_cuda(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                              const Tensor& rstd, int64_t groups, GradMode mode, Stream s) {
  const int64_t rows = rows_of(x), C = x.size(-1);
  set_device(x);
  if (dx.defined()) {
    const cuda::NormParams p{false, rows * groups, C / groups, 0.0f, nullptr, rstd.data<float>(), groups};
    cuda::launch_backward(p, dx, dout, x, w, s);
  }
  if (!dw.defined() || C == 0) return;
  const int64_t chunks = std::max<int64_t>(1, (rows + cuda::kRowChunk - 1) / cuda::kRowChunk);
  Tensor part = Tensor::zeros({chunks, C}, DType::f32, x.device(), s);
  const dim3 grid(static_cast<unsigned>((C + 127) / 128), static_cast<unsigned>(chunks));
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "rmsnorm_backward", [&] {
    cuda::group_dw_partial_kernel<<<grid, 128, 0, cuda_stream(s)>>>(
        part.data<float>(), static_cast<const scalar_t*>(dout.raw()), static_cast<const scalar_t*>(x.raw()),
        rstd.data<float>(), rows, C, C / groups, groups);
  });
  LCTX_CUDA_CHECK_LAUNCH("group_dw_partial_kernel");
  cuda::group_dw_sum_kernel<<<grid_size(C, 128), 128, 0, cuda_stream(s)>>>(dw.data<float>(), part.data<float>(),
                                                                           chunks, C, mode == GradMode::accumulate);
  LCTX_CUDA_CHECK_LAUNCH("group_dw_sum_kernel");
}

}  // namespace lctx::ops::detail
