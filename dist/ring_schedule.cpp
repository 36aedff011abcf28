#include "dist/ring_schedule.h"

#include <algorithm>
#include <limits>
#include <utility>

namespace lctx::dist {

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

std::vector<AttnBlock> ring_blocks(const Layout& layout, int q_rank, int k_rank, const attn::FlashOptions& o) {
  const bool alibi = o.alibi_slopes.defined();
  const bool window = o.window_left >= 0 || o.window_right >= 0;
  const bool causal = o.mask == attn::Mask::causal;
  std::vector<AttnBlock> out;
  for (const Segment& q : layout.ring_segments(q_rank)) {
    for (const Segment& k : layout.ring_segments(k_rank)) {
      const Visibility v = classify(q.global_begin, q.length, k.global_begin, k.length, o);
      if (v == Visibility::none) continue;
      if (o.documents && !o.documents->share_document(q.global_begin, q.global_begin + q.length, k.global_begin,
                                                      k.global_begin + k.length))
        continue;
      out.push_back({q.local_begin, q.local_begin + q.length, k.local_begin, k.local_begin + k.length, q.global_begin,
                     k.global_begin, v == Visibility::some});
    }
  }
  if (alibi) return out;  // ALiBi needs the true positions of every block
  if (causal && !window && q_rank == k_rank) {
    // A rank's tokens are in ascending global order, so causality over its own tokens is
    // causality over local indices: one causal call (positions only need to keep the order).
    const int64_t L = layout.ring_local_len();
    return {{0, L, 0, L, 0, 0, true}};
  }
  merge_rectangle(out);
  return out;
}

std::vector<RingStep> ring_schedule(const Layout& layout, int r, const attn::FlashOptions& o) {
  const int R = layout.ring_size();
  // needed[d]: some rank computes something with the K/V of the rank d hops behind it.
  std::vector<bool> needed(R, false);
  for (int x = 0; x < R; ++x)
    for (int d = 1; d < R; ++d)
      if (!needed[d] && !ring_blocks(layout, x, ((x - d) % R + R) % R, o).empty()) needed[d] = true;
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
  steps.push_back({1, 0, r, ring_blocks(layout, r, r, o)});
  for (int h = 1; h <= best_a; ++h) {
    const int src = ((r - h) % R + R) % R;
    steps.push_back({1, h, src, ring_blocks(layout, r, src, o)});
  }
  for (int h = 1; h <= best_b; ++h) {
    const int src = (r + h) % R;
    steps.push_back({-1, h, src, ring_blocks(layout, r, src, o)});
  }
  return steps;
}

}  // namespace lctx::dist
