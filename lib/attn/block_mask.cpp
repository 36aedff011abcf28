// Block masks (block_mask.h): the builders, the exact classification of a tile against the
// pattern, the per-tile lists and their cached device copies.
#include "attn/block_mask.h"

#include <algorithm>

#include "attn/block_select.h"

namespace lctx::attn {

namespace {

int64_t floor_div(int64_t a, int64_t d) { return a >= 0 ? a / d : -((-a + d - 1) / d); }

// How one component of the pattern covers the pairs of a tile that the base rule allows.
enum class Cover { none, some, all };

SparsePattern base_pattern(Mask mask) {
  SparsePattern p;
  p.causal = mask == Mask::causal;
  return p;
}

}  // namespace

int64_t TileLists::n_full() const {
  return std::count_if(entries.begin(), entries.end(), [](int32_t e) { return !partial(e); });
}
int64_t TileLists::n_partial() const { return static_cast<int64_t>(entries.size()) - n_full(); }

BlockMask::BlockMask(int64_t seq_len, SparsePattern pattern, std::vector<uint32_t> random_bits)
    : seq_len_(seq_len), pattern_(pattern), bits_(std::move(random_bits)) {
  const SparsePattern& m = pattern_;
  LCTX_CHECK(seq_len >= 1 && seq_len < (int64_t{1} << 31), "BlockMask: seq_len ", seq_len,
             " must be in [1, 2^31) (32-bit positions)");
  LCTX_CHECK(m.window >= 0 && m.window <= seq_len, "BlockMask: window ", m.window,
             " must be in [0, seq_len = ", seq_len, "] (a window larger than the sequence)");
  LCTX_CHECK(m.stride >= 0, "BlockMask: stride ", m.stride, " must be >= 0 (0: no strided keys)");
  LCTX_CHECK(m.n_global >= 0 && m.n_global <= seq_len, "BlockMask: ", m.n_global,
             " global tokens for a sequence of ", seq_len, " positions (at most seq_len)");
  LCTX_CHECK(m.random_block >= 0, "BlockMask: random_block ", m.random_block, " must be >= 0");
  LCTX_CHECK(m.enabled(), "BlockMask: the pattern enables no component (window, stride, global or random blocks)");
  if (m.random_block > 0) {
    const int64_t nb = (seq_len + m.random_block - 1) / m.random_block;
    LCTX_CHECK(m.random_words == (nb + 31) / 32 && static_cast<int64_t>(bits_.size()) == nb * m.random_words,
               "BlockMask: random bitmap of ", bits_.size(), " words with ", m.random_words, " per row, expected ",
               nb, " rows of ", (nb + 31) / 32);
    pattern_.random_bits = bits_.data();
  } else {
    pattern_.random_words = 0;
    pattern_.random_bits = nullptr;
    bits_.clear();
  }
}

TileClass BlockMask::classify(int64_t q0, int64_t q_tile, int64_t k0, int64_t k_tile) const {
  const SparsePattern& m = pattern_;
  const int64_t S = seq_len_, q1 = std::min(q0 + q_tile, S), k1 = std::min(k0 + k_tile, S);
  if (q0 >= q1 || k0 >= k1) return TileClass::empty;
  const bool ragged = q0 + q_tile > S || k0 + k_tile > S;
  const int64_t dmin = q0 - (k1 - 1), dmax = (q1 - 1) - k0;  // i - j over the tile
  if (m.causal && dmax < 0) return TileClass::empty;
  const bool base_all = !m.causal || dmin >= 0;
  const int64_t lo_b = m.causal ? std::max<int64_t>(dmin, 0) : dmin;  // lowest d the base rule allows
  int n_some = 0;
  bool any_all = false;
  auto add = [&](Cover c) {
    any_all |= c == Cover::all;
    n_some += c == Cover::some;
  };
  if (m.window > 0) {
    const int64_t w = m.window - 1;
    if (std::max(lo_b, -w) > std::min(dmax, w)) add(Cover::none);
    else add(base_all && dmin >= -w && dmax <= w ? Cover::all : Cover::some);
  }
  if (m.stride > 0) {
    if (floor_div(dmax, m.stride) * m.stride < lo_b) add(Cover::none);
    else add(base_all && (m.stride == 1 || dmin == dmax) ? Cover::all : Cover::some);
  }
  if (m.n_global > 0) {
    // keys j < g (the base rule leaves some pair with j = k0 since dmax >= 0 when causal)
    if (k0 >= m.n_global) add(Cover::none);
    else add(base_all && k1 <= m.n_global ? Cover::all : Cover::some);
    if (!m.causal) {  // queries i < g
      if (q0 >= m.n_global) add(Cover::none);
      else add(q1 <= m.n_global ? Cover::all : Cover::some);
    }
  }
  if (m.random_block > 0) {
    const int64_t rb = m.random_block;
    bool any = false, every = base_all;
    for (int64_t qb = q0 / rb; qb <= (q1 - 1) / rb; ++qb)
      for (int64_t kb = k0 / rb; kb <= (k1 - 1) / rb; ++kb) {
        const int64_t qz = std::min(q1, (qb + 1) * rb);
        const int64_t ka = std::max(k0, kb * rb);
        const bool set = (bits_[static_cast<size_t>(qb * m.random_words + kb / 32)] >> (kb % 32)) & 1u;
        if (set && (!m.causal || qz - 1 >= ka)) any = true;
        if (!set) every = false;
      }
    add(!any ? Cover::none : every ? Cover::all : Cover::some);
  }
  if (any_all) return ragged ? TileClass::partial : TileClass::full;
  if (n_some == 0) return TileClass::empty;
  if (n_some == 1) return TileClass::partial;
  // Components that each cover part of the tile may together cover all or none of it.
  int64_t seen = 0;
  for (int64_t i = q0; i < q1; ++i)
    for (int64_t j = k0; j < k1; ++j) seen += sparse_visible(m, i, j);
  if (seen == 0) return TileClass::empty;
  return !ragged && seen == q_tile * k_tile ? TileClass::full : TileClass::partial;
}

const TileLists& BlockMask::lists(int64_t q_tile, int64_t k_tile, TileOrder order) const {
  LCTX_CHECK(q_tile > 0 && k_tile > 0, "BlockMask::lists: tile sizes ", q_tile, " x ", k_tile, " must be positive");
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = lists_[{q_tile, k_tile, static_cast<int>(order)}];
  if (slot) return *slot;
  auto l = std::make_unique<TileLists>();
  l->q_tile = q_tile;
  l->k_tile = k_tile;
  l->order = order;
  const bool by_q = order == TileOrder::by_query;
  const int64_t own_tile = by_q ? q_tile : k_tile, other_tile = by_q ? k_tile : q_tile;
  const int64_t n_own = (seq_len_ + own_tile - 1) / own_tile, n_other = (seq_len_ + other_tile - 1) / other_tile;
  for (int64_t t = 0; t < n_own; ++t) {
    l->offsets.push_back(static_cast<int32_t>(l->entries.size()));
    for (int64_t u = 0; u < n_other; ++u) {
      const TileClass c = by_q ? classify(t * q_tile, q_tile, u * k_tile, k_tile)
                               : classify(u * q_tile, q_tile, t * k_tile, k_tile);
      if (c != TileClass::empty) l->entries.push_back(static_cast<int32_t>(u << 1 | (c == TileClass::partial)));
    }
  }
  l->offsets.push_back(static_cast<int32_t>(l->entries.size()));
  LCTX_CHECK(l->entries.size() < (size_t{1} << 31), "BlockMask::lists: ", l->entries.size(),
             " tile pairs overflow 32-bit offsets (use larger tiles)");
  slot = std::move(l);
  return *slot;
}

DeviceBlockMask BlockMask::device(int64_t q_tile, int64_t k_tile, TileOrder order, Device dev, Stream s) const {
  const TileLists& l = lists(q_tile, k_tile, order);
  auto upload = [&](const auto& v) {
    std::vector<double> d(v.begin(), v.end());
    if (d.empty()) d.push_back(0);
    return Tensor::from_vector({static_cast<int64_t>(d.size())}, d, DType::i32).to(dev, s);
  };
  std::lock_guard<std::mutex> lock(mu_);
  auto& lt = device_lists_[{q_tile, k_tile, static_cast<int>(order), dev.index}];
  if (!lt.first.defined()) lt = {upload(l.offsets), upload(l.entries)};
  DeviceBlockMask d{lt.first.data<int32_t>(), lt.second.data<int32_t>(), pattern_};
  if (pattern_.random_block > 0) {
    Tensor& bits = device_bits_[dev.index];
    if (!bits.defined()) {
      std::vector<int32_t> signed_bits(bits_.begin(), bits_.end());  // same 32 bits
      bits = upload(signed_bits);
    }
    d.pattern.random_bits = reinterpret_cast<const uint32_t*>(bits.data<int32_t>());
  }
  return d;
}

std::shared_ptr<const BlockMask> window_block_mask(int64_t seq_len, int64_t window, Mask mask) {
  LCTX_CHECK(window >= 1 && window <= seq_len, "window_block_mask: window ", window, " must be in [1, seq_len = ",
             seq_len, "] (a window larger than the sequence)");
  SparsePattern p = base_pattern(mask);
  p.window = static_cast<int32_t>(window);
  return std::make_shared<const BlockMask>(seq_len, p);
}

std::shared_ptr<const BlockMask> strided_block_mask(int64_t seq_len, int64_t window, int64_t stride) {
  LCTX_CHECK(stride >= 1, "strided_block_mask: stride ", stride, " must be >= 1");
  LCTX_CHECK(window >= 1 && window <= seq_len, "strided_block_mask: window ", window, " must be in [1, seq_len = ",
             seq_len, "] (a window larger than the sequence)");
  SparsePattern p = base_pattern(Mask::causal);
  p.window = static_cast<int32_t>(window);
  p.stride = static_cast<int32_t>(std::min(stride, seq_len));  // any s >= S keeps only i - j = 0
  return std::make_shared<const BlockMask>(seq_len, p);
}

std::shared_ptr<const BlockMask> global_block_mask(int64_t seq_len, int64_t n_global, Mask mask) {
  LCTX_CHECK(n_global >= 1 && n_global <= seq_len, "global_block_mask: ", n_global,
             " global tokens for a sequence of ", seq_len, " positions (must be in [1, seq_len])");
  SparsePattern p = base_pattern(mask);
  p.n_global = static_cast<int32_t>(n_global);
  return std::make_shared<const BlockMask>(seq_len, p);
}

std::shared_ptr<const BlockMask> random_block_mask(int64_t seq_len, int64_t block, int64_t per_row, uint64_t seed,
                                                   Mask mask) {
  LCTX_CHECK(block >= 1 && per_row >= 1, "random_block_mask: block ", block, " and per_row ", per_row,
             " must be >= 1");
  LCTX_CHECK(seq_len >= 1 && seq_len < (int64_t{1} << 31) && block <= seq_len, "random_block_mask: block ", block,
             " must be at most seq_len ", seq_len, " (in [1, 2^31))");
  SparsePattern p = base_pattern(mask);
  const int64_t nb = (seq_len + block - 1) / block, words = (nb + 31) / 32;
  p.random_block = static_cast<int32_t>(block);
  p.random_words = static_cast<int32_t>(words);
  std::vector<uint32_t> bits(static_cast<size_t>(nb * words), 0u);
  for (int64_t qb = 0; qb < nb; ++qb) {
    const int64_t n = p.causal ? qb + 1 : nb;  // candidate key blocks
    uint32_t* row = &bits[static_cast<size_t>(qb * words)];
    for (const int64_t kb : draw_distinct(seed, qb, n, per_row)) row[kb / 32] |= 1u << (kb % 32);
  }
  return std::make_shared<const BlockMask>(seq_len, p, std::move(bits));
}

std::shared_ptr<const BlockMask> block_mask_union(const BlockMask& a, const BlockMask& b) {
  const SparsePattern &x = a.pattern(), &y = b.pattern();
  LCTX_CHECK(a.seq_len() == b.seq_len(), "block_mask_union: seq_len ", a.seq_len(), " vs ", b.seq_len());
  LCTX_CHECK(x.causal == y.causal, "block_mask_union: a causal and a bidirectional mask");
  LCTX_CHECK(!x.stride || !y.stride || x.stride == y.stride, "block_mask_union: strides ", x.stride, " and ",
             y.stride, " differ (one stride per mask)");
  LCTX_CHECK(!x.random_block || !y.random_block || x.random_block == y.random_block,
             "block_mask_union: random block sizes ", x.random_block, " and ", y.random_block, " differ");
  SparsePattern p = x;
  p.window = std::max(x.window, y.window);
  p.stride = std::max(x.stride, y.stride);
  p.n_global = std::max(x.n_global, y.n_global);
  p.random_block = std::max(x.random_block, y.random_block);
  p.random_words = std::max(x.random_words, y.random_words);
  std::vector<uint32_t> bits = a.random_bits().empty() ? b.random_bits() : a.random_bits();
  if (!a.random_bits().empty() && !b.random_bits().empty())
    for (size_t i = 0; i < bits.size(); ++i) bits[i] |= b.random_bits()[i];
  return std::make_shared<const BlockMask>(a.seq_len(), p, std::move(bits));
}

}  // namespace lctx::attn
