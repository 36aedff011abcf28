// Element types: DType enum, host-side bf16/f16 storage types with round-to-nearest-even
// conversion, and the dispatch macro that turns a runtime DType into a template type.
// Host types are plain 16-bit wrappers so CPU-only builds need no CUDA headers; CUDA code
// reinterprets them as __nv_bfloat16 / __half (same bits).
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "core/error.h"

namespace lctx {

// Floating types for data; i32/i64 for token ids, labels, positions and document ids.
enum class DType : uint8_t { f64, f32, bf16, f16, i32, i64 };

struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f);
  explicit operator float() const;
};

struct f16 {
  uint16_t bits = 0;
  f16() = default;
  explicit f16(float f);
  explicit operator float() const;
};

inline bf16::bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a quiet NaN
    bits = static_cast<uint16_t>((u >> 16) | 0x40);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  bits = static_cast<uint16_t>(u >> 16);
}
inline bf16::operator float() const {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline f16::f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or NaN
    bits = static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    return;
  }
  if (ax >= 0x47800000u) {  // >= 65536: inf (65520..65536 overflow via rounding below)
    bits = static_cast<uint16_t>(sign | 0x7c00u);
    return;
  }
  if (ax < 0x38800000u) {  // subnormal half (or zero): add magic to round at the right bit
    float af;
    std::memcpy(&af, &ax, 4);
    af += 0.5f;  // 0.5 = 2^-1; half subnormal ulp is 2^-24, float ulp at 0.5 is 2^-24
    uint32_t r;
    std::memcpy(&r, &af, 4);
    bits = static_cast<uint16_t>(sign | (r - 0x3f000000u));
    return;
  }
  uint32_t mant_odd = (ax >> 13) & 1u;
  uint32_t v = ax + 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to even
  bits = static_cast<uint16_t>(sign | (v >> 13));
}
inline f16::operator float() const {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exp = (bits >> 10) & 0x1fu;
  const uint32_t mant = bits & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    float f = static_cast<float>(mant) * (1.0f / 16777216.0f);  // mant * 2^-24
    std::memcpy(&u, &f, 4);
    u |= sign;
  } else {
    u = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: return 8;
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f64: return "f64";
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
  }
  return "?";
}

// The accumulation dtype of a float dtype: f64 stays f64 (exact CPU gradient checks), every
// other is f32. Weight gradients, optimizer state, attention lse and f32 partial outputs, norm
// statistics and losses are kept in it.
constexpr DType wide_dtype(DType d) { return d == DType::f64 ? DType::f64 : DType::f32; }

// Value conversion between element types; f64 <-> f32 never rounds through a 16-bit type,
// and 16-bit types go through float.
template <class D, class S>
inline D convert(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else if constexpr (std::is_integral_v<D>) {
    if constexpr (std::is_integral_v<S> || std::is_floating_point_v<S>) return static_cast<D>(v);
    else return static_cast<D>(static_cast<float>(v));
  } else if constexpr (std::is_integral_v<S>) {
    if constexpr (std::is_floating_point_v<D>) return static_cast<D>(v);
    else return D(static_cast<float>(v));
  } else if constexpr (std::is_same_v<D, double> || std::is_same_v<D, float>) {
    if constexpr (std::is_same_v<S, double> || std::is_same_v<S, float>) return static_cast<D>(v);
    else return static_cast<D>(static_cast<float>(v));
  } else {
    return D(static_cast<float>(v));
  }
}

// DType parsed from its name ("f32", "bf16", ...); throws naming the bad value.
DType dtype_from_name(std::string_view name);

template <class T> struct dtype_of;
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<f16> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <class T> inline constexpr DType dtype_v = dtype_of<T>::value;

}  // namespace lctx

// Runs the following lambda body with `scalar_t` bound to the C++ type of `dtype`.
// Usage: LCTX_DISPATCH_FLOAT(t.dtype(), "rmsnorm", [&] { kernel<scalar_t>(...); });
#define LCTX_DISPATCH_CASE_(DT, T, ...) \
  case DT: {                            \
    using scalar_t = T;                 \
    return __VA_ARGS__();               \
  }
#define LCTX_DISPATCH_CPU_FLOAT(dtype, opname, ...)                                      \
  [&] {                                                                                  \
    switch (dtype) {                                                                     \
      LCTX_DISPATCH_CASE_(::lctx::DType::f64, double, __VA_ARGS__)                       \
      LCTX_DISPATCH_CASE_(::lctx::DType::f32, float, __VA_ARGS__)                        \
      default:                                                                           \
        LCTX_FAIL(opname, ": CPU supports f32 and f64, got ", ::lctx::dtype_name(dtype)); \
    }                                                                                    \
  }()
