// Sequence parallelism for a recurrent kernel that takes an initial state and returns its final
// state with gradients of both (linear attention now; Mamba next), on any Layout, zigzag
// included, with no token permutation. The caller supplies what its kernel does on one segment
// of this rank's tokens (Layout::segments); this file orders the calls around state_scan:
//   forward:  run every segment from zeros (its summary: e = final state, a = decay product),
//             scan the summaries in global segment order, re-run every segment that does not
//             start the sequence from its true incoming state (those runs write the outputs);
//   backward: segments not at the start: the backward with the outputs' gradient only gives
//             d(incoming); the reverse scan gives each segment the gradient G of its final
//             state; a last backward per segment with d_final = G (and, for the segment that
//             starts the sequence, the outputs' gradient too) completes the input gradients.
// The kernel's own gradient of its decays (given state0 = the true incoming state) already
// holds the decay product's part, so the scan's da is not used. States are [B, n, m] (n rows
// with one decay each, m values per row), in the scan's dtype (f32; f64 for f64 inputs).
#pragma once
#include <functional>
#include <vector>

#include "dist/state_scan.h"

namespace lctx::dist {

struct SegmentKernel {
  // Runs the kernel on the segment from state0 (undefined: zeros), writes the segment's
  // outputs, and returns its final state [B, n, m].
  std::function<Tensor(const Segment& seg, const Tensor& state0)> forward;
  // a [B, n]: what multiplies state0 in the segment's final state (the product of its decays).
  std::function<Tensor(const Segment& seg)> decay;
  // The kernel's backward on the segment from state0 (undefined: zeros) given d_final (the
  // gradient of its final state; undefined: zeros) and, when `outputs`, the gradient of its
  // outputs; adds the input gradients into the caller's and returns d_state0 [B, n, m].
  std::function<Tensor(const Segment& seg, const Tensor& state0, const Tensor& d_final, bool outputs)> backward;
};

// What the forward leaves for the backward (small: two states per segment).
struct RecurrentScan {
  std::vector<Affine> summaries;  // per local segment
  ScanResult scan;                // incoming states per local segment
};

// Collective over `sp` (layout.size() ranks, ranked like Mesh::sp).
RecurrentScan recurrent_forward(Comm& sp, const Layout& layout, const SegmentKernel& k, Stream s = {});
void recurrent_backward(Comm& sp, const Layout& layout, const SegmentKernel& k, const RecurrentScan& saved,
                        Stream s = {});

}  // namespace lctx::dist
