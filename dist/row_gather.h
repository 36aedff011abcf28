// Row gather: the token rows at a list of global positions, on every rank: the keys and values
// of strided or global-token attention patterns, without gathering the whole sequence. Each
// rank packs the listed rows it holds (Layout::owner_runs); one all-gather brings them all.
// Backward: one reduce-scatter sums every rank's row gradients into a block per owner, which
// adds them into its dx.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"
#include "dist/comm.h"
#include "dist/layout.h"

namespace lctx::dist {

// x: this rank's tokens [B, L, ...] (dim 1 = tokens in layout order, L = layout.local_len()).
// Returns [B, positions.size(), ...] in x's dtype: row j is global position positions[j]
// (each in [0, seq_len); any order, repeats allowed). Every rank passes the same positions.
// Collective over `sp`.
Tensor row_gather_forward(Comm& sp, const Layout& layout, const Tensor& x, std::span<const int64_t> positions,
                          Stream s = {});

// drows: this rank's gradient of the gathered rows [B, positions.size(), ...]; the sum over
// all ranks of each row is added into its owner's dx [B, L, ...] (f32 or f64, summed in dx's
// dtype). Collective over `sp`.
void row_gather_backward(Comm& sp, const Layout& layout, const Tensor& drows, std::span<const int64_t> positions,
                         Tensor& dx, Stream s = {});

}  // namespace lctx::dist
