// Layout: which tokens of a sequence each sequence-parallel rank holds, and, per ring step,
// which (query rows, key rows, mask) blocks of attention it computes. It is the one owner of
// the token permutation: positions (RoPE, masks), shard/unshard of tokens, labels, doc ids,
// and the ring schedule that ring forward and backward both read.
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
//
// Ring schedule of ring rank r: step 0 is local (its own K/V); forward hops h = 1..a use the
// K/V of rank r - h (passed r -> r+1 each hop); backward hops h = 1..b use rank r + h (passed
// r -> r-1), restarting from the rank's own K/V. a and b are the same on every rank and as
// small as the mask allows (a sliding window exchanges only the neighbours it reaches; full
// or causal attention: a = R-1, b = 0). A step whose blocks are all masked keeps its
// exchange (every rank posts the same sequence) but computes nothing.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "attn/flash.h"
#include "core/tensor.h"

namespace lctx::dist {

class Comm;

enum class LayoutKind { contiguous, zigzag };
std::string_view layout_kind_name(LayoutKind k);

// One flash call: local query rows [q_begin, q_end) of this rank against local key rows
// [k_begin, k_end) of the K/V block it holds, with flash offsets q_pos / k_pos. masked=false:
// every pair is visible by position (call without causal/window); true: apply the mask rules
// at these (true global) positions. Documents and ALiBi always apply.
struct AttnBlock {
  int64_t q_begin = 0, q_end = 0, k_begin = 0, k_end = 0;
  int64_t q_pos = 0, k_pos = 0;
  bool masked = false;
  bool operator==(const AttnBlock&) const = default;
};

struct RingStep {
  int dir = 1;  // +1: K/V travels r -> r+1, -1: r -> r-1 (0th step counts as +1)
  int hop = 0;  // 0 = local
  int src = 0;  // ring rank whose K/V this step uses
  std::vector<AttnBlock> blocks;
  // True when this step receives its K/V (and dK/dV) from the previous step's exchange in the
  // same direction; false when it starts a phase from the rank's own K/V.
  bool continues(const RingStep& prev) const { return dir == prev.dir && hop == prev.hop + 1; }
};

struct Segment {  // a run of consecutive global positions held by a rank
  int64_t global_begin = 0, local_begin = 0, length = 0;
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

  // The tokens of `sp_rank` along `dim` of a full-sequence tensor (a new contiguous tensor).
  Tensor shard(const Tensor& full, int sp_rank, int dim = 1) const;
  // Inverse of shard: shards[i] of sp rank i -> the full tensor (contiguous).
  Tensor unshard(std::span<const Tensor> shards, int dim = 1) const;
  // Collective over the sp communicator (size() ranks, ranked like Mesh::sp).
  Tensor unshard(Comm& sp, const Tensor& local, int dim = 1) const;

  // Attention blocks of ring rank q_rank's queries against ring rank k_rank's keys for the
  // mask in `opts` (causal, window, ALiBi); empty when the mask hides every pair.
  std::vector<AttnBlock> blocks(int q_rank, int k_rank, const attn::FlashOptions& opts) const;
  // The ring steps of ring rank `ring_rank` (see the header comment).
  std::vector<RingStep> ring_schedule(int ring_rank, const attn::FlashOptions& opts) const;

  std::string str() const;

 private:
  LayoutKind kind_;
  int64_t seq_len_;
  int ring_, ulysses_;
};

}  // namespace lctx::dist
