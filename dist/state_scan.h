// State scan: sequence parallelism for any linear recurrence h <- a ⊙ h + e (linear attention,
// retention, Mamba, ...) on any Layout, zigzag included. A rank summarises each of its
// segments (Layout::segments, local order) as the affine map its tokens apply to the state
// (computed by the local kernel with h0 = 0); one all-gather brings every rank's summaries, and
// each rank scans them in global segment order in fp32 (f64 for f64 inputs), so it learns the
// state entering each of its segments and the state after the whole sequence. Backward is the
// mirror image: one all-gather of the incoming-state gradients and a reverse scan.
// The scan is small (segments x B x n x m elements): CPU loop in state_scan.cpp, CUDA kernel in
// state_scan.cu.
#pragma once
#include <span>
#include <vector>

#include "core/strided.h"  // LCTX_HD
#include "core/tensor.h"
#include "dist/comm.h"
#include "dist/layout.h"

namespace lctx::dist {

// The map h_out = a ⊙ h_in + e of one segment: e [B, n, m], a [B, n]; a[b, i] multiplies row
// e[b, i, :] and h[b, i, :] (m = 1: elementwise decays; n = heads, m = d_k * d_v: a scalar
// decay per head). a and e share one float dtype.
struct Affine {
  Tensor a;
  Tensor e;
};

struct ScanResult {
  std::vector<Tensor> incoming;  // per local segment: the state entering it, [B, n, m]
  Tensor final_state;            // the state after the last global segment (same on every rank)
};

struct ScanGrads {
  std::vector<Affine> d_local;  // per local segment: da [B, n], de [B, n, m]
  Tensor d_h0;                  // [B, n, m], the same on every rank
};

// `local` holds this rank's summaries, one per segment of layout.segments(sp.rank()); h0
// [B, n, m] is the state before global position 0 (undefined: zeros). Results are contiguous,
// in f32 (f64 when e is f64), on e's device. Collective over `sp` (layout.size() ranks).
ScanResult state_scan_forward(Comm& sp, const Layout& layout, std::span<const Affine> local, const Tensor& h0,
                              Stream s = {});

// Gradients given those of the incoming states (d_incoming, per local segment) and of the
// final state (d_final, the same on every rank; undefined: zeros). With G_j the gradient of
// the state entering global segment j (G_K = d_final): G_j = d_incoming_j + a_j ⊙ G_{j+1},
// de_j = G_{j+1}, da_j = sum over m of G_{j+1} ⊙ h_in_j, d_h0 = G_0 (the same on every rank).
// `fwd` is this call's forward result (its incoming states are the h_in). Collective over `sp`.
ScanGrads state_scan_backward(Comm& sp, const Layout& layout, std::span<const Affine> local, const ScanResult& fwd,
                              std::span<const Tensor> d_incoming, const Tensor& d_final, Stream s = {});

namespace detail {

// The scan both directions run: `steps` affine steps applied in order to `rows` x `m` states,
// step t applying slot order[t] of `slots`. Host/device contract of state_scan.cu.
struct ScanParams {
  const void* slots = nullptr;     // [n_slots, rows * (m + 1)]: per slot a [rows], then x [rows, m]
  const int64_t* order = nullptr;  // [steps], in the memory of the data
  const void* h0 = nullptr;        // [rows, m]; nullptr: zeros
  void* states = nullptr;          // [steps + 1, rows, m]: the state before each step, then the last
  int64_t steps = 0, rows = 0, m = 0;
  DType dtype = DType::f32;  // f32 or f64
  int device = 0;            // CUDA device of the data
};

// State element i (of rows * m) through every step: the CPU loop and the CUDA kernel both run it.
template <class T>
LCTX_HD inline void scan_element(const ScanParams& p, int64_t i) {
  const T* slots = static_cast<const T*>(p.slots);
  T* states = static_cast<T*>(p.states);
  const int64_t size = p.rows * p.m, width = p.rows * (p.m + 1), row = i / p.m;
  T h = p.h0 ? static_cast<const T*>(p.h0)[i] : T(0);
  for (int64_t t = 0; t < p.steps; ++t) {
    states[t * size + i] = h;
    const T* slot = slots + p.order[t] * width;
    h = slot[row] * h + slot[p.rows + i];
  }
  states[p.steps * size + i] = h;
}

// out[r] = sum over k of x[r, k] * y[r, k] (da from G and h_in), contiguous, one dtype.
struct RowDotParams {
  const void* x = nullptr;  // [rows, m]
  const void* y = nullptr;  // [rows, m]
  void* out = nullptr;      // [rows]
  int64_t rows = 0, m = 0;
  DType dtype = DType::f32;  // f32 or f64
  int device = 0;
};

#ifdef LCTX_HAVE_CUDA
void scan_cuda(const ScanParams& p, Stream s);
void row_dot_cuda(const RowDotParams& p, Stream s);
#endif

}  // namespace detail
}  // namespace lctx::dist
