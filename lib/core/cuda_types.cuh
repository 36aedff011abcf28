// Device-side element types: maps lctx's host types to CUDA's (__nv_bfloat16, __half),
// float conversions usable in kernels, and the dispatch macro for CUDA launch sites.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/dtype.h"

namespace lctx {

template <class T> struct cuda_type { using type = T; };
template <> struct cuda_type<bf16> { using type = __nv_bfloat16; };
template <> struct cuda_type<f16> { using type = __half; };
template <class T> using cuda_t = typename cuda_type<T>::type;

template <class T> __host__ __device__ __forceinline__ float to_f32(T v) { return static_cast<float>(v); }
template <> __host__ __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __host__ __device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

template <class T> __host__ __device__ __forceinline__ T from_f32(float v) { return static_cast<T>(v); }
template <> __host__ __device__ __forceinline__ __nv_bfloat16 from_f32(float v) { return __float2bfloat16_rn(v); }
template <> __host__ __device__ __forceinline__ __half from_f32(float v) { return __float2half_rn(v); }

// Device conversion matching lctx::convert on the host (f64 stays exact).
template <class D, class S>
__host__ __device__ __forceinline__ D cuda_convert(S v) {
  if constexpr (std::is_same_v<D, S>) return v;
  else if constexpr (std::is_integral_v<D>) {
    if constexpr (std::is_arithmetic_v<S>) return static_cast<D>(v);
    else return static_cast<D>(to_f32(v));
  } else if constexpr (std::is_integral_v<S>) {
    if constexpr (std::is_floating_point_v<D>) return static_cast<D>(v);
    else return from_f32<D>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<D, double>) {
    if constexpr (std::is_same_v<S, float>) return static_cast<double>(v);
    else return static_cast<double>(to_f32(v));
  } else if constexpr (std::is_same_v<S, double>) {
    if constexpr (std::is_same_v<D, float>) return static_cast<float>(v);
    else return from_f32<D>(static_cast<float>(v));
  } else return from_f32<D>(to_f32(v));
}

}  // namespace lctx

// Binds `scalar_t` to the device type of `dtype` (double, float, __nv_bfloat16, __half).
#define LCTX_DISPATCH_CUDA_ALL(dtype, opname, ...)                                  \
  [&] {                                                                             \
    switch (dtype) {                                                                \
      LCTX_DISPATCH_CASE_(::lctx::DType::f64, double, __VA_ARGS__)                  \
      LCTX_DISPATCH_CASE_(::lctx::DType::f32, float, __VA_ARGS__)                   \
      LCTX_DISPATCH_CASE_(::lctx::DType::bf16, __nv_bfloat16, __VA_ARGS__)          \
      LCTX_DISPATCH_CASE_(::lctx::DType::f16, __half, __VA_ARGS__)                  \
      LCTX_DISPATCH_CASE_(::lctx::DType::i32, int32_t, __VA_ARGS__)                 \
      LCTX_DISPATCH_CASE_(::lctx::DType::i64, int64_t, __VA_ARGS__)                 \
    }                                                                               \
    LCTX_FAIL(opname, ": unsupported dtype ", ::lctx::dtype_name(dtype));           \
  }()
// f32, bf16, f16: the dtypes CUDA compute kernels support.
#define LCTX_DISPATCH_CUDA_FLOAT(dtype, opname, ...)                                        \
  [&] {                                                                                     \
    switch (dtype) {                                                                        \
      LCTX_DISPATCH_CASE_(::lctx::DType::f32, float, __VA_ARGS__)                           \
      LCTX_DISPATCH_CASE_(::lctx::DType::bf16, __nv_bfloat16, __VA_ARGS__)                  \
      LCTX_DISPATCH_CASE_(::lctx::DType::f16, __half, __VA_ARGS__)                          \
      default: break;                                                                       \
    }                                                                                       \
    LCTX_FAIL(opname, ": CUDA supports f32, bf16 and f16, got ", ::lctx::dtype_name(dtype)); \
  }()
