// Philox4x32-10 counter-based generator and the portable transforms built on it.
// Host and device run the same integer code, and the float transforms use only + - * /
// and sqrt (correctly rounded in IEEE on both; rng.cpp/rng.cu are compiled without FMA
// contraction), so a given (seed, index) yields bit-identical numbers on CPU and GPU.
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>

#include "core/strided.h"  // LCTX_HD

namespace lctx::philox {

struct U4 {
  uint32_t x, y, z, w;
};

LCTX_HD inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Four 32-bit random words for counter `ctr` under key `seed`.
LCTX_HD inline U4 generate(uint64_t seed, uint64_t ctr) {
  uint32_t c0 = static_cast<uint32_t>(ctr), c1 = static_cast<uint32_t>(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {c0, c1, c2, c3};
}

// Uniform double in (0, 1] from two words (53 random bits).
LCTX_HD inline double unit_open0(uint32_t a, uint32_t b) {
  const uint64_t bits = ((static_cast<uint64_t>(a) << 32) | b) >> 11;
  return (static_cast<double>(bits) + 1.0) * (1.0 / 9007199254740992.0);
}

// Natural log for x in (0, 1], from exponent extraction and an atanh series.
LCTX_HD inline double log_unit(double x) {
  uint64_t u;
#ifdef __CUDA_ARCH__
  u = static_cast<uint64_t>(__double_as_longlong(x));
#else
  std::memcpy(&u, &x, 8);
#endif
  int e = static_cast<int>((u >> 52) & 0x7ff) - 1023;
  u = (u & 0x000fffffffffffffull) | 0x3ff0000000000000ull;  // mantissa in [1, 2)
  double m;
#ifdef __CUDA_ARCH__
  m = __longlong_as_double(static_cast<long long>(u));
#else
  std::memcpy(&m, &u, 8);
#endif
  if (m > 1.4142135623730951) {
    m = m * 0.5;
    e += 1;
  }
  const double t = (m - 1.0) / (m + 1.0), t2 = t * t;
  double s = 0.0;
  for (int k = 21; k >= 1; k -= 2) s = s * t2 + 1.0 / k;
  return static_cast<double>(e) * 0.6931471805599453 + 2.0 * t * s;
}

// cos(2*pi*u) for u in [0, 1): quadrant reduction and Taylor series on [0, pi/2).
LCTX_HD inline double cos_2pi(double u) {
  const double v = u * 4.0;
  const int q = static_cast<int>(v);
  const double th = (v - q) * 1.5707963267948966, th2 = th * th;
  double c = 0.0, s = 0.0;
  for (int k = 20; k >= 2; k -= 2) c = (c + 1.0) * (-th2 / (static_cast<double>(k) * (k - 1)));
  c += 1.0;
  for (int k = 21; k >= 3; k -= 2) s = (s + 1.0) * (-th2 / (static_cast<double>(k) * (k - 1)));
  s = (s + 1.0) * th;
  switch (q & 3) {
    case 0: return c;
    case 1: return -s;
    case 2: return -c;
    default: return s;
  }
}

// Element `i` of a stream: uniform in [0, 1) and standard normal (Box-Muller).
LCTX_HD inline double uniform(uint64_t seed, uint64_t i) {
  const U4 r = generate(seed, i);
  return unit_open0(r.x, r.y) * -1.0 + 1.0;  // (0,1] -> [0,1)
}
LCTX_HD inline double normal(uint64_t seed, uint64_t i) {
  const U4 r = generate(seed, i);
  const double u1 = unit_open0(r.x, r.y), u2 = unit_open0(r.z, r.w) - 1.0 / 9007199254740992.0;
  return sqrt(-2.0 * log_unit(u1)) * cos_2pi(u2);
}

}  // namespace lctx::philox
