// Random tensors from the Philox counter-based generator: element i (row-major) of a fill
// depends only on (seed, offset + i), not on the device, thread count or tensor layout,
// so CPU and GPU runs, and every simulated or real rank layout, draw the same numbers.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace lctx {

// Uniform in [low, high).
void rng_uniform(Tensor& t, uint64_t seed, uint64_t offset, double low = 0.0, double high = 1.0, Stream s = {});
// Normal with the given mean and standard deviation.
void rng_normal(Tensor& t, uint64_t seed, uint64_t offset, double mean = 0.0, double std = 1.0, Stream s = {});

namespace detail {
enum class Distribution { uniform, normal };
void cuda_rng_fill(Tensor& t, Distribution dist, uint64_t seed, uint64_t offset, double a, double b, Stream s);
}  // namespace detail

}  // namespace lctx
