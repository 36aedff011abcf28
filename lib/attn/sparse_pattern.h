// The element rule of a block mask (block_mask.h) as a plain struct: which keys a query sees.
// The CPU reference (flash_reference.cpp) and the CUDA kernels (flash_mask.cuh, on the partial
// tiles of the mask's lists) evaluate the same sparse_visible, so both mask exactly the same
// pairs. Query i sees key j (sequence positions) when the base rule allows it (causal: j <= i)
// and at least one enabled component does:
//   window  w > 0:  |i - j| < w                 (with causal: the w keys i - w < j <= i)
//   stride  s > 0:  (i - j) mod s == 0          (Sparse Transformer strided keys)
//   global  g > 0:  j < g: the first g positions are seen by every query; without causal
//                   also i < g: those positions see every key (Longformer/BigBird global tokens)
//   random  blocks: bit (i / rb, j / rb) of a bitmap (BigBird random key blocks)
#pragma once
#include <cstdint>

#include "core/strided.h"  // LCTX_HD

namespace lctx::attn {

// Positions and sizes are 32-bit (BlockMask checks seq_len < 2^31): the kernels evaluate the
// rule per element on partial tiles, where 64-bit division would cost registers and spills.
struct SparsePattern {
  bool causal = false;
  int32_t window = 0, stride = 0, n_global = 0;  // 0: component off
  int32_t random_block = 0;                      // rb; 0: no random blocks
  int32_t random_words = 0;                      // 32-bit words per bitmap row
  const uint32_t* random_bits = nullptr;         // [ceil(S / rb)][random_words], on the call's device

  LCTX_HD bool enabled() const { return window > 0 || stride > 0 || n_global > 0 || random_block > 0; }
};

LCTX_HD inline bool sparse_visible(const SparsePattern& m, int64_t i64, int64_t j64) {
  const int32_t i = static_cast<int32_t>(i64), j = static_cast<int32_t>(j64), d = i - j;
  if (m.causal && d < 0) return false;
  if (m.window > 0 && d < m.window && d > -m.window) return true;
  if (m.stride > 0 && d % m.stride == 0) return true;
  if (m.n_global > 0 && (j < m.n_global || (!m.causal && i < m.n_global))) return true;
  if (m.random_block > 0) {
    const int32_t kb = j / m.random_block;
    return (m.random_bits[i / m.random_block * m.random_words + kb / 32] >> (kb % 32)) & 1u;
  }
  return false;
}

}  // namespace lctx::attn
