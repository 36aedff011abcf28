// SSD's elementwise maps on CUDA (ssd.h), fp32 math: the inputs of linear_attn (one thread per
// element of x), the D skip, and the gradient map: a warp per (b, t, h) row for the sums over
// the head dim, then one block per head for the sums over rows (dA, dD, d_dt_bias) in a fixed
// order (deterministic).
#include "core/cuda/launch.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_types.cuh"
#include "ssm/ssd.h"
#include "ssm/ssm_math.h"

namespace lctx::ssm::detail {

namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;

const float* ptr_or_null(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }

template <class T>
__global__ void map_inputs_kernel(float* __restrict__ dt, float* __restrict__ raw, T* __restrict__ v,
                                  float* __restrict__ log_decay, const T* __restrict__ dt_in, const T* __restrict__ x,
                                  const float* __restrict__ A, const float* __restrict__ bias, int64_t n, int heads,
                                  int P, bool softplus) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / P;
    const int h = static_cast<int>(r % heads);
    const float rw = to_f32(dt_in[r]) + (bias ? bias[h] : 0.0f);
    const float d = softplus ? detail::softplus(rw) : rw;
    v[i] = from_f32<T>(d * to_f32(x[i]));
    if (i % P == 0) raw[r] = rw, dt[r] = d, log_decay[r] = d * A[h];
  }
}

template <class T>
__global__ void add_skip_kernel(T* __restrict__ y, const T* __restrict__ x, const float* __restrict__ D, int64_t n,
                                int heads, int P) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_f32<T>(to_f32(y[i]) + D[i / P % heads] * to_f32(x[i]));
}

// Per row r: dx, d_dt, and the row's terms of the per-head sums: pA = dlog dt, pD = dy . x,
// pB = d_dt (fp32, before rounding to dt's dtype).
template <class T>
__global__ void row_grads_kernel(T* __restrict__ dx, T* __restrict__ d_dt, float* __restrict__ pA,
                                 float* __restrict__ pD, float* __restrict__ pB, const T* __restrict__ x,
                                 const T* __restrict__ dy, const T* __restrict__ dv, const float* __restrict__ dlog,
                                 const float* __restrict__ dt, const float* __restrict__ raw,
                                 const float* __restrict__ A, const float* __restrict__ D, int64_t rows, int heads,
                                 int P, bool softplus) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32; r < rows; r += int64_t(gridDim.x) * kWarps) {
    const int h = static_cast<int>(r % heads);
    const float d = dt[r], skip = D ? D[h] : 0.0f;
    float sv = 0.0f, sd = 0.0f;
    for (int p = lane; p < P; p += 32) {
      const int64_t i = r * P + p;
      const float xv = to_f32(x[i]), g = to_f32(dy[i]), dvv = to_f32(dv[i]);
      sv += dvv * xv;
      sd += g * xv;
      dx[i] = from_f32<T>(dvv * d + skip * g);
    }
    sv = warp_sum(sv);
    sd = warp_sum(sd);
    if (lane == 0) {
      const float ddt = dlog[r] * A[h] + sv;
      const float out = softplus ? ddt * detail::sigmoid(raw[r]) : ddt;
      d_dt[r] = from_f32<T>(out);
      pA[r] = dlog[r] * d;
      pD[r] = sd;
      pB[r] = out;
    }
  }
}

// out[h] += sum over rows r with r % heads == h of part[r], for each defined out: one block per head.
__global__ void head_sums_kernel(float* __restrict__ dA, float* __restrict__ dD, float* __restrict__ dbias,
                                 const float* __restrict__ pA, const float* __restrict__ pD,
                                 const float* __restrict__ pB, int64_t rows, int heads) {
  __shared__ float scratch[32];
  const int h = blockIdx.x;
  float a = 0.0f, d = 0.0f, b = 0.0f;
  for (int64_t r = h + int64_t(threadIdx.x) * heads; r < rows; r += int64_t(blockDim.x) * heads)
    a += pA[r], d += pD[r], b += pB[r];
  a = block_sum(a, scratch);
  d = block_sum(d, scratch);
  b = block_sum(b, scratch);
  if (threadIdx.x == 0) {
    dA[h] += a;
    if (dD) dD[h] += d;
    if (dbias) dbias[h] += b;
  }
}

}  // namespace

void ssd_map_inputs_cuda(Tensor& dt, Tensor& raw, Tensor& v, Tensor& log_decay, const SsdInputs& in, Softplus sp,
                         Stream s) {
  const int64_t n = in.x.numel();
  if (n == 0) return;
  set_device(in.x);
  const int heads = static_cast<int>(in.x.size(2)), P = static_cast<int>(in.x.size(3));
  LCTX_DISPATCH_CUDA_FLOAT(in.x.dtype(), "ssd_map_inputs", [&] {
    map_inputs_kernel<<<grid_size(n, kThreads), kThreads, 0, cuda_stream(s)>>>(
        dt.data<float>(), raw.data<float>(), static_cast<scalar_t*>(v.raw()), log_decay.data<float>(),
        static_cast<const scalar_t*>(in.dt.raw()), static_cast<const scalar_t*>(in.x.raw()), in.A.data<float>(),
        ptr_or_null(in.dt_bias), n, heads, P, sp == Softplus::on);
  });
  LCTX_CUDA_CHECK_LAUNCH("ssd map_inputs_kernel");
}

void ssd_add_skip_cuda(Tensor& y, const Tensor& x, const Tensor& D, Stream s) {
  const int64_t n = x.numel();
  if (n == 0) return;
  set_device(x);
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "ssd_add_skip", [&] {
    add_skip_kernel<<<grid_size(n, kThreads), kThreads, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(y.raw()), static_cast<const scalar_t*>(x.raw()), D.data<float>(), n,
        static_cast<int>(x.size(2)), static_cast<int>(x.size(3)));
  });
  LCTX_CUDA_CHECK_LAUNCH("ssd add_skip_kernel");
}

void ssd_map_grads_cuda(SsdGrads& g, const SsdInputs& in, const Tensor& dy, const Tensor& dv, const Tensor& d_log_decay,
                        const Tensor& dt, const Tensor& raw, Softplus sp, Stream s) {
  const Tensor& x = in.x;
  const int64_t rows = x.size(0) * x.size(1) * x.size(2);
  if (rows == 0) return;
  set_device(x);
  const int heads = static_cast<int>(x.size(2)), P = static_cast<int>(x.size(3));
  Tensor parts = Tensor::empty({3, rows}, DType::f32, x.device());
  float* pA = parts.data<float>();
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "ssd_map_grads", [&] {
    row_grads_kernel<<<grid_size(rows, kWarps), kThreads, 0, cuda_stream(s)>>>(
        static_cast<scalar_t*>(g.dx.raw()), static_cast<scalar_t*>(g.d_dt.raw()), pA, pA + rows, pA + 2 * rows,
        static_cast<const scalar_t*>(x.raw()), static_cast<const scalar_t*>(dy.raw()),
        static_cast<const scalar_t*>(dv.raw()), d_log_decay.data<float>(), dt.data<float>(), raw.data<float>(),
        in.A.data<float>(), ptr_or_null(in.D), rows, heads, P, sp == Softplus::on);
  });
  LCTX_CUDA_CHECK_LAUNCH("ssd row_grads_kernel");
  head_sums_kernel<<<heads, kThreads, 0, cuda_stream(s)>>>(
      g.dA.data<float>(), g.dD.defined() ? g.dD.data<float>() : nullptr,
      g.d_dt_bias.defined() ? g.d_dt_bias.data<float>() : nullptr, pA, pA + rows, pA + 2 * rows, rows, heads);
  LCTX_CUDA_CHECK_LAUNCH("ssd head_sums_kernel");
}

}  // namespace lctx::ssm::detail
