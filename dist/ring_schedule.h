// Ring schedule: per ring step, which (query rows, key rows, mask) blocks of attention a ring
// rank computes. Ring attention forward and backward both read it (ring_attention.cpp); the
// token placement it is computed from is the Layout's.
//
// Ring schedule of ring rank r: step 0 is local (its own K/V); forward hops h = 1..a use the
// K/V of rank r - h (passed r -> r+1 each hop); backward hops h = 1..b use rank r + h (passed
// r -> r-1), restarting from the rank's own K/V. a and b are the same on every rank and as
// small as the mask allows (a sliding window exchanges only the neighbours it reaches; full
// or causal attention: a = R-1, b = 0). Blocks whose positions share no document
// (FlashOptions::documents, the same on every rank) are dropped too, so packed documents that
// never cross a rank's segments need fewer hops. A step whose blocks are all masked keeps its
// exchange (every rank posts the same sequence) but computes nothing.
#pragma once
#include <cstdint>
#include <vector>

#include "attn/flash.h"
#include "dist/layout.h"

namespace lctx::dist {

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

// Attention blocks of ring rank q_rank's queries against ring rank k_rank's keys for the
// mask in `opts` (causal, window, ALiBi, documents); empty when the mask hides every pair.
std::vector<AttnBlock> ring_blocks(const Layout& layout, int q_rank, int k_rank, const attn::FlashOptions& opts);
// The ring steps of ring rank `ring_rank` (see the header comment).
std::vector<RingStep> ring_schedule(const Layout& layout, int ring_rank, const attn::FlashOptions& opts);

}  // namespace lctx::dist
