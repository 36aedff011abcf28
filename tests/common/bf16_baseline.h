// The GPU tolerance rule for kernels tested in bf16: the GPU's error against the f64 CPU
// reference (run on the same bf16-rounded inputs) must be at most twice a plain-bf16 baseline,
// how far that reference moves when its inputs are rounded to bf16 once (the reference on the
// unrounded inputs). A fixed tolerance would be loose for some outputs and flaky for others.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>

#include "common/check.h"

namespace lctx::test {

// t rounded to bf16 once, as an f64 CPU tensor.
inline Tensor round_bf16(const Tensor& t) { return t.to(Device::cpu()).to(DType::bf16).to(DType::f64); }

// gpu: the GPU result; ref: the f64 reference on the rounded inputs; exact: on the unrounded ones.
inline void expect_within_bf16_baseline(const std::string& what, const Tensor& gpu, const Tensor& ref,
                                        const Tensor& exact) {
  const double err = rel_error(gpu, ref), baseline = rel_error(ref, exact);
  std::printf("[ bf16 ] %s: error %.3e, baseline %.3e, ratio %.2f\n", what.c_str(), err, baseline, err / baseline);
  EXPECT_LE(err, 2 * baseline) << what;
}

}  // namespace lctx::test
