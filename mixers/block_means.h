// Compressed block rows of a sharded sequence: the sequence cut into blocks of b tokens, each
// block's K rows and V rows averaged into one row (the compressed memory of the memory kind,
// NSA's compressed branch with `compress: mean`). Any layout: each rank sums the rows it holds
// into their blocks (a block may span segments and ranks), one all-reduce of the
// [2, B, N, Hkv, hd] sums gives every rank all N rows. A trailing partial block (S not a
// multiple of b) is never formed. Backward: the rows' gradients of every rank's queries are
// summed the same way, and each rank spreads 1 / b of a row's gradient over the block's K/V rows
// it holds. The pooling is ops::row_pool over an index of this rank's rows (block_rows_index,
// built once per layout and device): CPU f32/f64, CUDA with f32 sums.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"
#include "ops/row_pool.h"

namespace lctx::dist {
class Comm;
}

namespace lctx::mixers {

struct BlockRows {
  Tensor k, v;  // [B, N, Hkv, hd], the dtype of the K/V rows
};

// The block of each of this rank's rows at global `positions` (local order): positions / b
// for the first N = `blocks` blocks (a trailing partial block is none), on `dev`.
ops::RowBuckets block_rows_index(std::span<const int64_t> positions, int64_t block, int64_t blocks, Device dev);

// k, v [B, L, Hkv, hd]: this rank's rows, indexed by `ix` (block_rows_index). Returns the N
// block means (the same on every rank). Collective over `sp`.
BlockRows block_means_forward(dist::Comm& sp, const Tensor& k, const Tensor& v, const ops::RowBuckets& ix,
                              int64_t block);

// dc [2, B, N, Hkv, hd] (wide: f32, f64 for f64): this rank's gradients of the block rows (k
// then v), summed over the group in place; 1 / b of them is added into dk, dv [B, L, Hkv, hd]
// (wide, contiguous) at the rows this rank holds. Collective over `sp`.
void block_means_backward(dist::Comm& sp, const Tensor& dc, const ops::RowBuckets& ix, int64_t block, const Tensor& dk,
                          const Tensor& dv);

}  // namespace lctx::mixers
