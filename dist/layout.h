// Layout: which tokens of a sequence each sequence-parallel rank holds. It is the one owner
// of the token permutation: positions (RoPE, masks), shard/unshard of tokens, labels, doc ids,
// who holds a given position (halo and row exchanges), and the segments the ring schedule
// (ring_schedule.h) and the recurrent state scan (state_scan.h) are computed from.
//
// Ring level (R ranks):
//   contiguous: ring rank r holds tokens [r*S/R, (r+1)*S/R).
//   zigzag:     S is cut into 2R chunks of c = S/(2R); ring rank r holds chunks r and 2R-1-r
//               (in that order), so every rank gets the same causal work.
// Ulysses level (U ranks per ring rank): sp rank (ring r, ulysses u) holds the u-th of U equal
// consecutive pieces of ring rank r's tokens (in its local order); the Ulysses all-to-all
// therefore rebuilds exactly ring rank r's tokens. sp_rank = r * U + u (as in Mesh).
//
// Labels must be shifted in global order *before* sharding (label[i] = token[i + 1]); shard
// then moves every per-token tensor (tokens, positions, labels, doc ids) the same way.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lctx::dist {

class Comm;

enum class LayoutKind { contiguous, zigzag };
std::string_view layout_kind_name(LayoutKind k);

struct Segment {  // a run of consecutive global positions held by a rank
  int64_t global_begin = 0, local_begin = 0, length = 0;
};

// The local rows of `seg` in t [B, L, ...] (a view along dim 1).
inline Tensor rows(const Tensor& t, const Segment& seg) { return t.slice(1, seg.local_begin, seg.local_begin + seg.length); }

struct Owner {  // where a global position lives: sp rank and row in that rank's local order
  int sp_rank = 0;
  int64_t local_index = 0;
  bool operator==(const Owner&) const = default;
};

// Entries [index, index + length) of a list of global positions, held by one sp rank as its
// consecutive local rows [local_begin, local_begin + length).
struct OwnerRun {
  int64_t index = 0;
  int sp_rank = 0;
  int64_t local_begin = 0, length = 0;
  bool operator==(const OwnerRun&) const = default;
};

class Layout {
 public:
  Layout(LayoutKind kind, int64_t seq_len, int ring_size, int ulysses_size = 1);

  LayoutKind kind() const { return kind_; }
  int64_t seq_len() const { return seq_len_; }
  int ring_size() const { return ring_; }
  int ulysses_size() const { return ulysses_; }
  int size() const { return ring_ * ulysses_; }                  // sequence-parallel ranks
  int64_t local_len() const { return seq_len_ / size(); }         // tokens per sp rank
  int64_t ring_local_len() const { return seq_len_ / ring_; }     // tokens per ring rank

  std::vector<Segment> ring_segments(int ring_rank) const;
  std::vector<Segment> segments(int sp_rank) const;
  // Global position of every local token of sp rank `sp_rank`, in local order.
  std::vector<int64_t> positions(int sp_rank) const;
  Tensor positions_tensor(int sp_rank, DType dtype = DType::i64) const;  // [local_len]
  // Who holds global position `global_pos` (in [0, seq_len)), at which local row.
  Owner owner(int64_t global_pos) const;
  // `positions` (each in [0, seq_len)) cut into the fewest runs held as consecutive rows of one
  // rank, in list order: what the row exchanges (halo, row_gather) copy with one slice each.
  std::vector<OwnerRun> owner_runs(std::span<const int64_t> positions) const;

  // The tokens of `sp_rank` along `dim` of a full-sequence tensor (a new contiguous tensor).
  Tensor shard(const Tensor& full, int sp_rank, int dim = 1) const;
  // Inverse of shard: shards[i] of sp rank i -> the full tensor (contiguous).
  Tensor unshard(std::span<const Tensor> shards, int dim = 1) const;
  // Collective over the sp communicator (size() ranks, ranked like Mesh::sp).
  Tensor unshard(Comm& sp, const Tensor& local, int dim = 1) const;

  std::string str() const;

 private:
  LayoutKind kind_;
  int64_t seq_len_;
  int ring_, ulysses_;
};

}  // namespace lctx::dist
