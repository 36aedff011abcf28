// Mamba (Mamba-1) as a mixer (kind `mamba`): the selective state-space layer of Gu & Dao,
//   [x_in, z] = in_proj(x);  u = silu(causal_conv1d(x_in))      (depthwise, width d_conv)
//   [dt_low, B, C] = x_proj(u);  dt_raw = dt_proj(dt_low)         (bias: the scan's dt_bias)
//   y = selective_scan(u, dt_raw, A = -exp(A_log), B, C, D, gate silu(z));  out = out_proj(y)
// on lib/ssm's kernels, with the Mamba paper's inits (A_log[d, n] = log(n + 1), dt
// log-uniform in [1e-3, 1e-1] through the inverse softplus into dt_bias, D = 1).
// Sequence parallelism on any layout with no token permutation: the conv's d_conv - 1 rows of
// history per segment come from whichever rank holds them (dist/halo.h; zeros before position
// 0), and the scan's state [B, d_inner, d_state] passes between segments through
// dist/recurrent_sp.h as (d_inner * d_state) rows of one value each (a = exp(A sum dt)).
// Pass::checkpoint keeps the scan output, the halos and the scan's small states; Pass::recompute
// redoes the projections and the conv (no communication). Every piece runs on the tensors'
// device; on CUDA the conv and the selective scan need their kernels (their own errors say so
// until then). Packed documents are refused: the state would run across document starts.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "dist/recurrent_sp.h"
#include "mixers/mixer.h"

namespace lctx::dist {
class Mesh;
}  // namespace lctx::dist

namespace lctx::mixers {

struct MambaOptions {
  int64_t dim = 0;      // model dimension
  int64_t d_state = 16;  // N: states per channel
  int64_t d_conv = 4;    // conv width
  int64_t expand = 2;    // d_inner = expand * dim
  int64_t dt_rank = 0;   // 0: ceil(dim / 16)
  int64_t chunk = 128;   // the scan kernel's chunk (the result does not depend on it beyond rounding)
};

struct MambaSaved final : Saved {
  Tensor x_in, z;                // in_proj halves [B, L, d_inner] (dropped, rebuilt)
  std::vector<Tensor> halo;      // per local segment, the d_conv - 1 rows of x_in before it (kept)
  Tensor u;                      // silu(conv(x_in)) [B, L, d_inner] (dropped, rebuilt)
  Tensor dt_low, B, C;           // x_proj parts [B, L, dt_rank], [B, L, d_state] x2 (dropped, rebuilt)
  Tensor dt;                     // dt_proj output, before dt_bias and softplus [B, L, d_inner] (dropped, rebuilt)
  Tensor A;                      // -exp(A_log) [d_inner, d_state] (dropped, rebuilt)
  dist::RecurrentScan scan;      // the state entering each local segment (kept)
  Tensor y;                      // gated scan output [B, L, d_inner] (kept)
  Tensor out;                    // [B, L, dim]
};

// d_inner and the resolved dt_rank of these options.
int64_t mamba_d_inner(const MambaOptions& o);
int64_t mamba_dt_rank(const MambaOptions& o);

// The mesh (its sp group) and the layout must outlive the mixer.
std::unique_ptr<Mixer> make_mamba_mixer(const MambaOptions& o, dist::Mesh& mesh, const dist::Layout& layout);

}  // namespace lctx::mixers
