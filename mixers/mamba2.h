// Mamba-2 as a mixer (kind `mamba2`): the SSD layer of Dao & Gu,
//   [z, xBC, dt_raw] = in_proj(x);  [x, B, C] = silu(causal_conv1d(xBC))   (x in H heads of P)
//   y = ssd(x, dt_raw, A = -exp(A_log) per head, B, C in G groups, D);  g = y * silu(z)
//   out = out_proj(rmsnorm(g) * norm_weight)
// on lib/ssm's SSD (chunked linear attention with a per-head, per-token decay), with
// mamba_ssm's inits (A uniform in [1, 16], dt log-uniform in [1e-3, 1e-1] into dt_bias, D = 1).
// The gated RMSNorm normalises each of the G groups of d_inner / G channels on its own, as
// mamba_ssm's RMSNormGated(group_size = d_inner / ngroups) (the whole d_inner when G = 1).
// Sequence parallelism as `mamba` (mixers/mamba.h): the conv's history through dist/halo.h, the
// state [B, H, N, P] through dist/recurrent_sp.h as H rows of N * P values (a = exp(A_h sum dt)).
// Pass::checkpoint keeps the SSD output, the halos and the scan's small states. Every piece runs
// on the tensors' device; on CUDA the conv and the SSD's linear attention need their kernels
// (their own errors say so until then). Packed documents are refused.
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

struct Mamba2Options {
  int64_t dim = 0;        // model dimension
  int64_t d_state = 128;  // N
  int64_t d_conv = 4;
  int64_t expand = 2;     // d_inner = expand * dim = heads * head_dim
  int64_t head_dim = 64;  // P
  int64_t groups = 1;     // G: B and C shared by heads / G heads each
  int64_t chunk = 64;     // SSD chunk (the result does not depend on it beyond rounding)
  double norm_eps = 1e-5;
};

struct Mamba2Saved final : Saved {
  Tensor z, xbc, dt;         // in_proj parts [B, L, d_inner], [B, L, d_inner + 2 G N], [B, L, H] (dropped, rebuilt)
  std::vector<Tensor> halo;  // per local segment, the d_conv - 1 rows of xBC before it (kept)
  Tensor x, B, C;            // conv output split: [B, L, H, P], [B, L, G, N] x2 (dropped, rebuilt)
  Tensor A;                  // -exp(A_log) [H] (dropped, rebuilt)
  dist::RecurrentScan scan;  // the state entering each local segment (kept)
  Tensor y;                  // SSD output [B, L, H, P] (kept)
  Tensor zy;                 // [z, y] packed [B, L, 2 d_inner], the gate's input (dropped, rebuilt)
  Tensor g, rstd;            // gated y and its RMSNorm statistics (dropped, rebuilt)
  Tensor normed;             // [B, L, d_inner], out_proj's input (dropped, rebuilt)
  Tensor out;                // [B, L, dim]
};

// The mesh (its sp group) and the layout must outlive the mixer.
std::unique_ptr<Mixer> make_mamba2_mixer(const Mamba2Options& o, dist::Mesh& mesh, const dist::Layout& layout);

}  // namespace lctx::mixers
