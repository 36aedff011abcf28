// Rows pooled into buckets and the transpose: the block compression of the memory kinds
// (mixers/block_means.h). rows [B, L, R] and buckets [B, N, R], contiguous, one dtype; each
// row in at most one bucket, as a RowBuckets index says (on the tensors' device):
//   row_pool_forward:  buckets[b, c] += scale * (sum of rows[b, l] over the rows l of bucket c)
//   row_pool_backward: rows[b, l]    += scale * buckets[b, c(l)]   (the forward's transpose)
// A bucket's rows are added one after another in ascending order (no atomics), so the results
// are deterministic. CPU: f32/f64; CUDA: f32 (the wide dtype of bf16/f16 rows).
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"

namespace lctx::ops {

struct RowBuckets {
  Tensor bucket;   // [L] i32: each row's bucket, -1 for none
  Tensor offsets;  // [N + 1] i32: bucket c's rows are members[offsets[c] .. offsets[c + 1])
  Tensor members;  // i32 row indices, ascending within each bucket
};

// The index of L rows given each row's bucket in [0, buckets) or -1 (none), on `dev`.
RowBuckets row_buckets(std::span<const int64_t> bucket_of_row, int64_t buckets, Device dev);

void row_pool_forward(Tensor& buckets, const Tensor& rows, const RowBuckets& ix, double scale, Stream s = {});

void row_pool_backward(Tensor& rows, const Tensor& buckets, const RowBuckets& ix, double scale, Stream s = {});

}  // namespace lctx::ops
