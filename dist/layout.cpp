#include "dist/layout.h"

#include <algorithm>
#include <limits>

#include "dist/comm.h"

namespace lctx::dist {

std::string_view layout_kind_name(LayoutKind k) { return k == LayoutKind::zigzag ? "zigzag" : "contiguous"; }

Layout::Layout(LayoutKind kind, int64_t seq_len, int ring_size, int ulysses_size)
    : kind_(kind), seq_len_(seq_len), ring_(ring_size), ulysses_(ulysses_size) {
  LCTX_CHECK(seq_len > 0 && ring_size >= 1 && ulysses_size >= 1, "Layout: need seq_len > 0 and degrees >= 1, got ",
             str());
  const int64_t chunks = kind == LayoutKind::zigzag ? 2 * int64_t{ring_size} : ring_size;
  LCTX_CHECK(seq_len % chunks == 0, "Layout: ", str(), ": seq_len must be a multiple of ", chunks,
             kind == LayoutKind::zigzag ? " (2 chunks per ring rank)" : " (one chunk per ring rank)",
             "; pad the sequence");
  LCTX_CHECK(seq_len / ring_size % ulysses_size == 0, "Layout: ", str(), ": the ", seq_len / ring_size,
             " tokens of a ring rank do not split into ", ulysses_size, " equal Ulysses pieces; pad the sequence");
}

std::string Layout::str() const {
  return detail::cat(layout_kind_name(kind_), " S=", seq_len_, " ring=", ring_, " ulysses=", ulysses_);
}

std::vector<Segment> Layout::ring_segments(int r) const {
  LCTX_CHECK(r >= 0 && r < ring_, "Layout: ring rank ", r, " outside ", str());
  if (kind_ == LayoutKind::contiguous) {
    const int64_t L = ring_local_len();
    return {{r * L, 0, L}};
  }
  const int64_t c = seq_len_ / (2 * ring_);
  return {{r * c, 0, c}, {(2 * ring_ - 1 - r) * c, c, c}};
}

std::vector<Segment> Layout::segments(int sp_rank) const {
  LCTX_CHECK(sp_rank >= 0 && sp_rank < size(), "Layout: sp rank ", sp_rank, " outside ", str());
  const int r = sp_rank / ulysses_, u = sp_rank % ulysses_;
  const int64_t lo = u * local_len(), hi = lo + local_len();
  std::vector<Segment> out;
  for (const Segment& s : ring_segments(r)) {
    const int64_t a = std::max(s.local_begin, lo), b = std::min(s.local_begin + s.length, hi);
    if (a < b) out.push_back({s.global_begin + (a - s.local_begin), a - lo, b - a});
  }
  return out;
}

std::vector<int64_t> Layout::positions(int sp_rank) const {
  std::vector<int64_t> pos;
  for (const Segment& s : segments(sp_rank))
    for (int64_t i = 0; i < s.length; ++i) pos.push_back(s.global_begin + i);
  return pos;
}

Tensor Layout::positions_tensor(int sp_rank, DType dtype) const {
  const auto pos = positions(sp_rank);
  std::vector<double> v(pos.begin(), pos.end());
  return Tensor::from_vector({static_cast<int64_t>(v.size())}, v, dtype);
}

Tensor Layout::shard(const Tensor& full, int sp_rank, int dim) const {
  LCTX_CHECK(full.defined() && full.size(dim) == seq_len_, "Layout::shard: ", full.str(), " must have ", seq_len_,
             " tokens along dim ", dim, " (", str(), ")");
  Shape shape = full.shape();
  shape[dim < 0 ? dim + full.dim() : dim] = local_len();
  Tensor out = Tensor::empty(shape, full.dtype(), full.device());
  for (const Segment& s : segments(sp_rank))
    out.slice(dim, s.local_begin, s.local_begin + s.length).copy_from(full.slice(dim, s.global_begin, s.global_begin + s.length));
  return out;
}

Tensor Layout::unshard(std::span<const Tensor> shards, int dim) const {
  LCTX_CHECK(static_cast<int>(shards.size()) == size(), "Layout::unshard: ", shards.size(), " shards for ", str());
  Shape shape = shards[0].shape();
  const int d = dim < 0 ? dim + shards[0].dim() : dim;
  shape[d] = seq_len_;
  Tensor out = Tensor::empty(shape, shards[0].dtype(), shards[0].device());
  for (int r = 0; r < size(); ++r) {
    LCTX_CHECK(shards[r].size(d) == local_len(), "Layout::unshard: shard ", r, " ", shards[r].str(), " must have ",
               local_len(), " tokens along dim ", d);
    for (const Segment& s : segments(r))
      out.slice(d, s.global_begin, s.global_begin + s.length).copy_from(shards[r].slice(d, s.local_begin, s.local_begin + s.length));
  }
  return out;
}

Tensor Layout::unshard(Comm& sp, const Tensor& local, int dim) const {
  LCTX_CHECK(sp.size() == size(), "Layout::unshard: communicator of size ", sp.size(), " for ", str());
  Shape gshape = local.shape();
  gshape.insert(gshape.begin(), size());
  Tensor gathered = Tensor::empty(gshape, local.dtype(), local.device());
  sp.all_gather(local.contiguous(), gathered);
  std::vector<Tensor> shards;
  for (int r = 0; r < size(); ++r) shards.push_back(gathered.slice(0, r, r + 1).view(local.shape()));
  return unshard(shards, dim);
}

namespace {

constexpr int64_t kInf = std::numeric_limits<int64_t>::max() / 4;

enum class Visibility { none, all, some };

// Which pairs of global query positions [qa, qa+qn) x key positions [ka, ka+kn) the position
// rules (causal, window) show: key k is visible from q when q - lo <= k <= q + hi.
Visibility classify(int64_t qa, int64_t qn, int64_t ka, int64_t kn, const attn::FlashOptions& o) {
  const bool causal = o.mask == attn::Mask::causal;
  const int64_t hi = causal ? (o.window_right >= 0 ? std::min<int64_t>(o.window_right, 0) : 0)
                            : (o.window_right >= 0 ? o.window_right : kInf);
  const int64_t lo = o.window_left >= 0 ? o.window_left : kInf;
  const int64_t qb = qa + qn - 1, kb = ka + kn - 1;
  if (std::max(qa, ka - hi) > std::min(qb, kb + lo)) return Visibility::none;
  if (ka >= qb - lo && kb <= qa + hi) return Visibility::all;
  return Visibility::some;
}

// Merges unmasked blocks that tile one rectangle of local rows into a single block.
bool merge_rectangle(std::vector<AttnBlock>& bs) {
  if (bs.size() < 2) return false;
  for (const auto& b : bs)
    if (b.masked) return false;
  std::vector<std::pair<int64_t, int64_t>> qs, ks;
  for (const auto& b : bs) {
    qs.emplace_back(b.q_begin, b.q_end);
    ks.emplace_back(b.k_begin, b.k_end);
  }
  auto uniq = [](auto& v) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    for (size_t i = 1; i < v.size(); ++i)
      if (v[i].first != v[i - 1].second) return false;  // not one contiguous run
    return true;
  };
  if (!uniq(qs) || !uniq(ks) || qs.size() * ks.size() != bs.size()) return false;
  const AttnBlock m{qs.front().first, qs.back().second, ks.front().first, ks.back().second, bs[0].q_pos, bs[0].k_pos,
                    false};
  bs = {m};
  return true;
}

}  // namespace

std::vector<AttnBlock> Layout::blocks(int q_rank, int k_rank, const attn::FlashOptions& o) const {
  const bool alibi = o.alibi_slopes.defined();
  const bool window = o.window_left >= 0 || o.window_right >= 0;
  const bool causal = o.mask == attn::Mask::causal;
  std::vector<AttnBlock> out;
  for (const Segment& q : ring_segments(q_rank)) {
    for (const Segment& k : ring_segments(k_rank)) {
      const Visibility v = classify(q.global_begin, q.length, k.global_begin, k.length, o);
      if (v == Visibility::none) continue;
      out.push_back({q.local_begin, q.local_begin + q.length, k.local_begin, k.local_begin + k.length, q.global_begin,
                     k.global_begin, v == Visibility::some});
    }
  }
  if (alibi) return out;  // ALiBi needs the true positions of every block
  if (causal && !window && q_rank == k_rank) {
    // A rank's tokens are in ascending global order, so causality over its own tokens is
    // causality over local indices: one causal call (positions only need to keep the order).
    const int64_t L = ring_local_len();
    return {{0, L, 0, L, 0, 0, true}};
  }
  merge_rectangle(out);
  return out;
}

std::vector<RingStep> Layout::ring_schedule(int r, const attn::FlashOptions& o) const {
  const int R = ring_;
  // needed[d]: some rank computes something with the K/V of the rank d hops behind it.
  std::vector<bool> needed(R, false);
  for (int x = 0; x < R; ++x)
    for (int d = 1; d < R; ++d)
      if (!needed[d] && !blocks(x, ((x - d) % R + R) % R, o).empty()) needed[d] = true;
  // a forward hops and b backward hops covering every needed d (d <= a or d >= R - b), with
  // a + b smallest; on ties the plain ring (b = 0) wins.
  int best_a = R - 1, best_b = 0;
  for (int a = R - 1; a >= 0; --a) {
    int first = R;  // smallest needed d > a
    for (int d = a + 1; d < R; ++d)
      if (needed[d]) {
        first = d;
        break;
      }
    const int b = first == R ? 0 : R - first;
    if (a + b < best_a + best_b) {
      best_a = a;
      best_b = b;
    }
  }
  std::vector<RingStep> steps;
  steps.push_back({1, 0, r, blocks(r, r, o)});
  for (int h = 1; h <= best_a; ++h) {
    const int src = ((r - h) % R + R) % R;
    steps.push_back({1, h, src, blocks(r, src, o)});
  }
  for (int h = 1; h <= best_b; ++h) {
    const int src = (r + h) % R;
    steps.push_back({-1, h, src, blocks(r, src, o)});
  }
  return steps;
}

}  // namespace lctx::dist
