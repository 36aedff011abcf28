// Finite-difference gradient check in f64: compares an analytic gradient with central
// differences of a scalar loss, element by element, reporting the worst relative error.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "core/tensor.h"

namespace lctx::test {

// `loss` recomputes a scalar from the current contents of `x` (f64, CPU, contiguous).
// Every element of x is perturbed by +-eps; x is restored afterwards.
inline void expect_grad_close(const std::function<double()>& loss, Tensor& x, const Tensor& analytic,
                              const char* name, double eps = 1e-6, double tol = 1e-6) {
  ASSERT_EQ(x.dtype(), DType::f64) << name;
  ASSERT_TRUE(x.device().is_cpu() && x.is_contiguous()) << name;
  ASSERT_EQ(x.shape(), analytic.shape()) << name;
  const auto g = analytic.to_vector();
  double* p = x.data<double>();
  double worst = 0;
  int64_t worst_i = -1;
  double worst_num = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double orig = p[i];
    p[i] = orig + eps;
    const double lp = loss();
    p[i] = orig - eps;
    const double lm = loss();
    p[i] = orig;
    const double num = (lp - lm) / (2 * eps);
    const double err = std::abs(num - g[i]) / std::max(1.0, std::abs(num) + std::abs(g[i]));
    if (!(err <= worst)) {
      worst = err;
      worst_i = i;
      worst_num = num;
    }
  }
  EXPECT_LE(worst, tol) << name << ": worst element " << worst_i << " numeric " << worst_num << " analytic "
                        << (worst_i >= 0 ? g[worst_i] : 0.0);
}

}  // namespace lctx::test
