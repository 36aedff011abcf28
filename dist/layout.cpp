#include "dist/layout.h"

#include <algorithm>

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

Owner Layout::owner(int64_t g) const {
  LCTX_CHECK(g >= 0 && g < seq_len_, "Layout::owner: position ", g, " outside [0, ", seq_len_, ") of ", str());
  int r = 0;
  int64_t i = 0;  // index in ring rank r's local order
  if (kind_ == LayoutKind::contiguous) {
    r = static_cast<int>(g / ring_local_len());
    i = g % ring_local_len();
  } else {
    const int64_t c = seq_len_ / (2 * ring_), chunk = g / c;
    r = static_cast<int>(chunk < ring_ ? chunk : 2 * ring_ - 1 - chunk);
    i = (chunk < ring_ ? 0 : c) + g % c;
  }
  return {r * ulysses_ + static_cast<int>(i / local_len()), i % local_len()};
}

std::vector<OwnerRun> Layout::owner_runs(std::span<const int64_t> positions) const {
  std::vector<OwnerRun> runs;
  for (size_t j = 0; j < positions.size(); ++j) {
    const Owner o = owner(positions[j]);
    if (!runs.empty()) {
      OwnerRun& last = runs.back();
      if (o.sp_rank == last.sp_rank && o.local_index == last.local_begin + last.length) {
        ++last.length;
        continue;
      }
    }
    runs.push_back({static_cast<int64_t>(j), o.sp_rank, o.local_index, 1});
  }
  return runs;
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

}  // namespace lctx::dist
