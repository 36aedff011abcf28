// Block masks for sparse attention: a SparsePattern (sparse_pattern.h: window, strided keys,
// global tokens, random key blocks and their union) over one sequence of seq_len positions,
// and per tile of one side the tiles of the other side worth visiting. Each listed tile is
// full (every pair visible: the kernels skip all mask work) or partial (the element rule runs
// per pair); tiles with no visible pair are left out. The forward walks per query tile its key
// tiles (TileOrder::by_query), the backward per key tile its query tiles (by_key, the transposed
// lists). A tile that reaches past the end of the sequence is never full.
//
// Lists are built on the host per tile shape when first asked for (flash.cu asks for the
// kernels' block shapes, the CPU tests for any) and kept; their device copies (and the random
// bitmap's) are uploaded once per device and kept with the mask, so a mask shared by every
// layer and step costs one upload. Building visits every tile pair: O((S / tile)^2).
//
// FlashOptions::block_mask applies a mask to a flash call over the whole sequence
// (Sq = Sk = seq_len, no offsets, mask none, no window, documents or ALiBi: the pattern is the
// whole rule). cuDNN computes none of these patterns: the automatic backend runs them on lctx's
// kernels and a forced cudnn is an error. A plain window (window_block_mask alone) is the flash
// window rule itself and runs as it: band tiles without lists, on cuDNN where it can. For the
// strided pattern at long lengths strided_attention.h is much faster than the lists (every tile
// holds a strided key), and its global-key form serves window + global tokens on cuDNN too.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "attn/flash.h"
#include "attn/sparse_pattern.h"
#include "core/tensor.h"

namespace lctx::attn {

enum class TileOrder { by_query, by_key };

// Per tile of the own side (queries for by_query), the tiles of the other side to visit in
// ascending order: entries[offsets[t] .. offsets[t + 1]), each tile << 1 | partial.
struct TileLists {
  int64_t q_tile = 0, k_tile = 0;
  TileOrder order = TileOrder::by_query;
  std::vector<int32_t> offsets, entries;
  static int32_t tile(int32_t e) { return e >> 1; }
  static bool partial(int32_t e) { return e & 1; }
  int64_t n_full() const;
  int64_t n_partial() const;
};

// Device copies of a mask for one tile shape: list pointers and the pattern with device bits.
struct DeviceBlockMask {
  const int32_t* offsets = nullptr;
  const int32_t* entries = nullptr;
  SparsePattern pattern;
};

enum class TileClass { empty, partial, full };

class BlockMask {
 public:
  // pattern.random_bits is ignored: `random_bits` holds the bitmap (ceil(S / rb) rows of
  // pattern.random_words words) when pattern.random_block > 0.
  BlockMask(int64_t seq_len, SparsePattern pattern, std::vector<uint32_t> random_bits = {});
  BlockMask(const BlockMask&) = delete;
  BlockMask& operator=(const BlockMask&) = delete;

  int64_t seq_len() const { return seq_len_; }
  // The rule with host random bits (valid while the mask lives).
  const SparsePattern& pattern() const { return pattern_; }
  const std::vector<uint32_t>& random_bits() const { return bits_; }
  bool visible(int64_t i, int64_t j) const { return sparse_visible(pattern_, i, j); }

  // Queries [q0, q0 + q_tile) x keys [k0, k0 + k_tile), exact (brute force where components overlap).
  TileClass classify(int64_t q0, int64_t q_tile, int64_t k0, int64_t k_tile) const;
  const TileLists& lists(int64_t q_tile, int64_t k_tile, TileOrder order) const;
  DeviceBlockMask device(int64_t q_tile, int64_t k_tile, TileOrder order, Device dev, Stream s) const;
  // Visible pairs of the whole mask (FLOP counts).
  double pairs() const;

 private:
  int64_t seq_len_;
  SparsePattern pattern_;
  std::vector<uint32_t> bits_;
  mutable std::mutex mu_;
  mutable std::map<std::tuple<int64_t, int64_t, int>, std::unique_ptr<TileLists>> lists_;
  mutable std::map<std::tuple<int64_t, int64_t, int, int>, std::pair<Tensor, Tensor>> device_lists_;
  mutable std::map<int, Tensor> device_bits_;
};

// Builders (checked: window / stride / global count in [1, seq_len]; clear errors otherwise).
// Sliding window of `window` keys (causal: the key itself and window - 1 before it).
std::shared_ptr<const BlockMask> window_block_mask(int64_t seq_len, int64_t window, Mask mask = Mask::causal);
// Sparse Transformer strided pattern, causal: the window plus every key with (i - j) mod stride == 0.
std::shared_ptr<const BlockMask> strided_block_mask(int64_t seq_len, int64_t window, int64_t stride);
// The first n_global positions: seen by every (later, when causal) query; without causal they
// also see every key.
std::shared_ptr<const BlockMask> global_block_mask(int64_t seq_len, int64_t n_global, Mask mask = Mask::causal);
// BigBird random key blocks: per query block of `block` positions, `per_row` distinct key
// blocks (causal: among those not after it) drawn from `seed` (same on every rank).
std::shared_ptr<const BlockMask> random_block_mask(int64_t seq_len, int64_t block, int64_t per_row, uint64_t seed,
                                                   Mask mask = Mask::causal);
// Pairs visible in a or b: same seq_len and causality; windows and global counts take the
// larger; strides and random block sizes must agree where both are set.
std::shared_ptr<const BlockMask> block_mask_union(const BlockMask& a, const BlockMask& b);

}  // namespace lctx::attn
