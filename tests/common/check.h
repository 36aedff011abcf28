// Test helpers: relative-error comparison of tensors (any device/dtype, compared in f64),
// and a skip macro for GPU tests on machines without a GPU.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/tensor.h"

namespace lctx::test {

// ||a - b|| / max(||b||, tiny) over all elements, in f64; NaN if either holds a NaN.
inline double rel_error(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  EXPECT_EQ(va.size(), vb.size()) << a.str() << " vs " << b.str();
  double num = 0, den = 0;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
    if (std::isnan(va[i]) || std::isnan(vb[i])) return NAN;
    num += (va[i] - vb[i]) * (va[i] - vb[i]);
    den += vb[i] * vb[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
    if (std::isnan(va[i]) != std::isnan(vb[i])) return INFINITY;
    if (!std::isnan(va[i])) m = std::max(m, std::abs(va[i] - vb[i]));
  }
  return m;
}

}  // namespace lctx::test

#define LCTX_EXPECT_CLOSE(a, b, rtol)                                                     \
  do {                                                                                    \
    const double lctx_rel_ = ::lctx::test::rel_error((a), (b));                           \
    EXPECT_LE(lctx_rel_, (rtol)) << #a " = " << (a).str() << " vs " #b " = " << (b).str(); \
  } while (0)

#define LCTX_REQUIRE_GPU()                                              \
  do {                                                                  \
    if (!::lctx::cuda_available()) GTEST_SKIP() << "no CUDA GPU present"; \
  } while (0)
