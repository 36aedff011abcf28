// SSD's elementwise maps on CUDA (ssd.h), fp32 math: the inputs of linear_attn and the D skip
// (a thread per pack of 8 elements, 16-byte loads for bf16), and the gradient map: a group of
// lanes per (b, t, h) row for the sums over the head dim, then ops' column reduction for the
// sums over rows (dA, dD, d_dt_bias) in a fixed order (deterministic).
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "core/cuda/launch.cuh"
#include "core/cuda/pack.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"
#include "ssm/ssd.h"
#include "ssm/ssm_math.h"

namespace lctx::ssm::detail {

namespace {

constexpr int kThreads = 256;

const float* ptr_or_null(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }

// f.template operator()<kVec>() with packs of 8 where rows of P elements allow them, else of 1.
template <class T, class F>
void with_vec(int P, std::initializer_list<const Tensor*> ts, F&& f) {
  if (packs_fit<T, 8>(P, ts)) f.template operator()<8>();
  else f.template operator()<1>();
}

// A thread per pack of kVec elements (P % kVec == 0: a pack lies in one row r = (b, t, h)).
template <class T, int kVec>
__global__ void map_inputs_kernel(float* __restrict__ dt, float* __restrict__ raw, T* __restrict__ v,
                                  float* __restrict__ log_decay, const T* __restrict__ dt_in, const T* __restrict__ x,
                                  const float* __restrict__ A, const float* __restrict__ bias, int64_t n, int heads,
                                  int P, bool softplus) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < n / kVec; g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = g * kVec, r = i / P;
    const int h = static_cast<int>(r % heads);
    const float rw = to_f32(dt_in[r]) + (bias ? bias[h] : 0.0f);
    const float d = softplus ? detail::softplus(rw) : rw;
    const Pack<T, kVec> px = load_pack<T, kVec>(x + i);
    Pack<T, kVec> pv;
#pragma unroll
    for (int k = 0; k < kVec; ++k) pv.v[k] = from_f32<T>(d * to_f32(px.v[k]));
    store_pack<T, kVec>(v + i, pv);
    if (i % P == 0) raw[r] = rw, dt[r] = d, log_decay[r] = d * A[h];
  }
}

template <class T, int kVec>
__global__ void add_skip_kernel(T* __restrict__ y, const T* __restrict__ x, const float* __restrict__ D, int64_t n,
                                int heads, int P) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < n / kVec; g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = g * kVec;
    const float skip = D[i / P % heads];
    const Pack<T, kVec> px = load_pack<T, kVec>(x + i);
    Pack<T, kVec> py = load_pack<T, kVec>(y + i);
#pragma unroll
    for (int k = 0; k < kVec; ++k) py.v[k] = from_f32<T>(to_f32(py.v[k]) + skip * to_f32(px.v[k]));
    store_pack<T, kVec>(y + i, py);
  }
}

// Per row r: dx, d_dt, and the row's terms of the per-head sums: pA = dlog dt, pD = dy . x,
// pB = d_dt (fp32, before rounding to dt's dtype). A group of kLanes lanes per row (kLanes
// divides 32), each lane walking packs of kVec elements.
template <class T, int kVec, int kLanes>
__global__ void row_grads_kernel(T* __restrict__ dx, T* __restrict__ d_dt, float* __restrict__ pA,
                                 float* __restrict__ pD, float* __restrict__ pB, const T* __restrict__ x,
                                 const T* __restrict__ dy, const T* __restrict__ dv, const float* __restrict__ dlog,
                                 const float* __restrict__ dt, const float* __restrict__ raw,
                                 const float* __restrict__ A, const float* __restrict__ D, int64_t rows, int heads,
                                 int P, bool softplus) {
  constexpr int kRowsPerWarp = 32 / kLanes;
  const int lane = threadIdx.x % kLanes;
  const int64_t first = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kLanes;
  const int64_t step = int64_t(gridDim.x) * blockDim.x / kLanes;
  // Every lane of a warp runs the same number of iterations (the shuffles need them all).
  const int64_t warp_rows = (rows + kRowsPerWarp - 1) / kRowsPerWarp * kRowsPerWarp;
  for (int64_t r = first; r < warp_rows; r += step) {
    const bool live = r < rows;
    const int h = static_cast<int>(r % heads);
    const float d = live ? dt[r] : 0.0f, skip = D && live ? D[h] : 0.0f;
    float sv = 0.0f, sd = 0.0f;
    for (int p = lane * kVec; live && p < P; p += kLanes * kVec) {
      const int64_t i = r * P + p;
      const Pack<T, kVec> px = load_pack<T, kVec>(x + i), pg = load_pack<T, kVec>(dy + i), pv = load_pack<T, kVec>(dv + i);
      Pack<T, kVec> pd;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const float xv = to_f32(px.v[k]), g = to_f32(pg.v[k]), dvv = to_f32(pv.v[k]);
        sv += dvv * xv;
        sd += g * xv;
        pd.v[k] = from_f32<T>(dvv * d + skip * g);
      }
      store_pack<T, kVec>(dx + i, pd);
    }
#pragma unroll
    for (int o = kLanes / 2; o > 0; o >>= 1) {
      sv += __shfl_xor_sync(0xffffffffu, sv, o);
      sd += __shfl_xor_sync(0xffffffffu, sd, o);
    }
    if (lane == 0 && live) {
      const float ddt = dlog[r] * A[h] + sv;
      const float out = softplus ? ddt * detail::sigmoid(raw[r]) : ddt;
      d_dt[r] = from_f32<T>(out);
      pA[r] = dlog[r] * d;
      pD[r] = sd;
      pB[r] = out;
    }
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
    with_vec<scalar_t>(P, {&in.x, &v}, [&]<int kVec>() {
      map_inputs_kernel<scalar_t, kVec><<<grid_size(n / kVec, kThreads), kThreads, 0, cuda_stream(s)>>>(
          dt.data<float>(), raw.data<float>(), static_cast<scalar_t*>(v.raw()), log_decay.data<float>(),
          static_cast<const scalar_t*>(in.dt.raw()), static_cast<const scalar_t*>(in.x.raw()), in.A.data<float>(),
          ptr_or_null(in.dt_bias), n, heads, P, sp == Softplus::on);
    });
  });
  LCTX_CUDA_CHECK_LAUNCH("ssd map_inputs_kernel");
}

void ssd_add_skip_cuda(Tensor& y, const Tensor& x, const Tensor& D, Stream s) {
  const int64_t n = x.numel();
  if (n == 0) return;
  set_device(x);
  const int P = static_cast<int>(x.size(3));
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "ssd_add_skip", [&] {
    with_vec<scalar_t>(P, {&x, &y}, [&]<int kVec>() {
      add_skip_kernel<scalar_t, kVec><<<grid_size(n / kVec, kThreads), kThreads, 0, cuda_stream(s)>>>(
          static_cast<scalar_t*>(y.raw()), static_cast<const scalar_t*>(x.raw()), D.data<float>(), n,
          static_cast<int>(x.size(2)), P);
    });
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
    auto launch = [&]<int kVec, int kLanes>() {
      row_grads_kernel<scalar_t, kVec, kLanes><<<grid_size(rows * kLanes, kThreads), kThreads, 0, cuda_stream(s)>>>(
          static_cast<scalar_t*>(g.dx.raw()), static_cast<scalar_t*>(g.d_dt.raw()), pA, pA + rows, pA + 2 * rows,
          static_cast<const scalar_t*>(x.raw()), static_cast<const scalar_t*>(dy.raw()),
          static_cast<const scalar_t*>(dv.raw()), d_log_decay.data<float>(), dt.data<float>(), raw.data<float>(),
          in.A.data<float>(), ptr_or_null(in.D), rows, heads, P, sp == Softplus::on);
    };
    // Eight lanes of eight elements per row for head dims that are multiples of 64 (Mamba-2's
    // 64 and 128); a warp per row otherwise.
    if (packs_fit<scalar_t, 8>(P, {&x, &dy, &dv, &g.dx}) && P % 64 == 0) launch.template operator()<8, 8>();
    else launch.template operator()<1, 32>();
  });
  LCTX_CUDA_CHECK_LAUNCH("ssd row_grads_kernel");
  // The per-row partials summed per head: columns of [rows / heads, heads] (ops' column
  // reduction: coalesced, fixed order).
  const Tensor none;
  for (auto [out, i] : {std::pair{&g.dA, 0}, std::pair{&g.dD, 1}, std::pair{&g.d_dt_bias, 2}})
    if (out->defined())
      ops::cuda::col_reduce(*out, ops::cuda::ColReduce::sum, parts.slice(0, i, i + 1), none, none, none,
                            rows / heads, heads, GradMode::accumulate, s);
}

}  // namespace lctx::ssm::detail
