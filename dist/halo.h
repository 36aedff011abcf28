// Halo exchange: for each segment a rank holds, the `width` token rows just before it in global
// order (a short convolution's left context, the keys of a sliding window), wherever they live.
// Under zigzag a segment's predecessor sits on a neighbour rank, or the rank itself, so a
// narrow halo is two neighbour exchanges; a wide one takes rows from several ranks.
// Layout::owner routes every row; ranks exchange in rounds (round d: send to rank + d, receive
// from rank - d, one grouped sendrecv each), only the rounds some rank needs, the same rounds
// on every rank. Backward sends each halo row's gradient back and adds it into its owner's dx.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "dist/comm.h"
#include "dist/layout.h"

namespace lctx::dist {

// x: this rank's tokens [B, L, ...] (dim 1 = tokens in layout order, L = layout.local_len()).
// Returns, per local segment (Layout::segments, local order), a [B, width, ...] tensor in x's
// dtype: row i holds global position g - width + i, g being the segment's first position;
// zeros for positions before 0. width >= 0 may exceed a segment. Collective over `sp`.
std::vector<Tensor> halo_forward(Comm& sp, const Layout& layout, const Tensor& x, int64_t width, Stream s = {});

// dhalo: per local segment, the gradient of its halo [B, width, ...] (width the same on every
// rank, in the wide dtype of dx); adds each row into the owner's dx [B, L, ...] (f32 or f64; on
// CUDA also bf16/f16: each row summed in fp32 and rounded once). Collective over `sp`.
void halo_backward(Comm& sp, const Layout& layout, std::span<const Tensor> dhalo, Tensor& dx, Stream s = {});

}  // namespace lctx::dist
