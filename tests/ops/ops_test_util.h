// Helpers for the lctx::ops tests: seeded random tensors, the "loss = sum(out * r)" scalar used
// by the gradient checks (its gradient with respect to out is r), and error-message matching.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>
#include <string>

#include "common/expect_error.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace lctx::test {

inline Tensor randn(const Shape& shape, uint64_t seed, DType dt = DType::f64, double mean = 0.0, double std = 1.0) {
  Tensor t = Tensor::empty(shape, dt);
  rng_normal(t, seed, 0, mean, std);
  return t;
}

// sum_i a_i * b_i in f64.
inline double dot(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  EXPECT_EQ(va.size(), vb.size());
  double s = 0;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) s += va[i] * vb[i];
  return s;
}

}  // namespace lctx::test
