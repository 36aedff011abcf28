// Linear attention as a mixer (kinds `linear` and `performer`): the AttentionCore's q/k/v (with
// an optional short conv, core.short_conv) and output projection around a feature map phi and
// the causal recurrence of lib/linear_attn
//   S_t = lambda_t S_{t-1} + phi(k_t) v_t^T,  o_t = phi(q_t)^T S_t  (/ phi(q_t)^T z_t normalised)
// with a decay lambda that is none, a fixed per-head retention schedule 1 - 2^(-5-h), a
// learned per-head sigmoid, or a per-token gate sigmoid(x W_g^T + b_g) (log-sigmoid into the
// kernel), and optionally an RMSNorm of each head's output (output_norm: the normaliser of
// TransNormer / GLA / fla's layers, bounded where the phi(q) . z denominator is not). The Performer is this mixer with FAVOR+ features: every rank draws the same random
// projection from `seed` and the draw number step / redraw_every (begin_step), so the features
// are a function of the config and the step, both stored in every checkpoint: resume is exact.
// Its key stabiliser is all-reduced (max) over the sequence-parallel group.
// Sequence parallelism: dist/recurrent_sp.h over this rank's segments (any layout, any Ulysses
// degree: the sp ranks' segments are scanned in global order, no all-to-all).
// Pass::checkpoint keeps the attention output and the scan's small states; the kernel's
// backward recomputes its chunk states, so Pass::recompute only redoes q/k/v, phi and decays.
// Every piece runs on the tensors' device; on CUDA the recurrence needs linear_attn's kernel
// (its own error says so until then).
// Packed documents are refused: the state would run across document starts.
#pragma once
#include <memory>

#include "dist/recurrent_sp.h"
#include "linear_attn/feature_map.h"
#include "linear_attn/linear_attn.h"
#include "mixers/attention_core.h"

namespace lctx::dist {
class Mesh;
}  // namespace lctx::dist

namespace lctx::mixers {

enum class OutputNorm { off, rms };

struct LinearAttentionOptions {
  AttentionCoreOptions core;  // position: rope or none
  linear_attn::FeatureKind feature = linear_attn::FeatureKind::elu_plus_one;
  linear_attn::Decay decay = linear_attn::Decay::none;
  linear_attn::Normalize normalize = linear_attn::Normalize::on;
  int64_t chunk = 64;
  OutputNorm output_norm = OutputNorm::off;  // RMSNorm per head (eps core.norm_eps), weight [H hd]
  // FAVOR+ (feature = favor): m random features drawn from `seed`, redrawn every
  // `redraw_every` steps (0: drawn once).
  int64_t features = linear_attn::kFavorFeatures;
  uint64_t seed = 0;
  int64_t redraw_every = 0;
};

struct LinearAttentionSaved final : Saved {
  QkvActs qkv;               // dropped by Pass::checkpoint, rebuilt by Pass::recompute
  Tensor fq, fk;             // phi(q) [B, L, H, m], phi(k) [B, L, Hkv, m] (dropped, rebuilt)
  Tensor gate;               // decay data: gate pre-activation [B, L, H] (dropped, rebuilt)
  Tensor log_decay;          // [H] or (data) [B, L, H], wide dtype; undefined without decay (dropped, rebuilt)
  Tensor key_stabiliser;     // favor: [B, Hkv], max over the sp group (kept)
  dist::RecurrentScan scan;  // the state entering each local segment (kept)
  Tensor o;                  // [B, L, H, hd] (kept)
  Tensor o_normed, o_rstd;   // output_norm: o normalised per head, and its 1/rms [B L H] (dropped, rebuilt)
  Tensor y;                  // [B, L, D]
};

// FAVOR+'s projection of draw number `draw` (the same on every rank).
uint64_t favor_draw_seed(uint64_t seed, int64_t draw);

// The mesh (its sp group) and the layout must outlive the mixer.
std::unique_ptr<Mixer> make_linear_attention_mixer(const LinearAttentionOptions& o, dist::Mesh& mesh,
                                                   const dist::Layout& layout);

}  // namespace lctx::mixers
