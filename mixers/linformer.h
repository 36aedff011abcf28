// Linformer as a mixer (kind `linformer`): the AttentionCore's q/k/v and output projection
// around Linformer attention (lib/linear_attn/linformer.h): keys and values projected along the
// sequence by learned E, F [k, n] (n = the sequence length the model is built for), then exact
// softmax of every query over the k projected rows. Bidirectional: every projected row mixes
// every position, so a token sees the future; there is no causal form. lctx-train trains causal
// LMs, so the registry refuses this kind unless mixer.linformer.bidirectional is set (see README).
// Sequence parallelism: each rank projects its own tokens with the columns of E and F at their
// global positions (Layout::segments, any layout and Ulysses degree); the projected K~, V~ are
// all-reduced over the sp group, and in the backward their gradients are, after which dK, dV, dE,
// dF are local (E and F gradients: each rank its own columns, summed over ranks by the trainer).
// Pass::checkpoint keeps o, its log-sum-exp and the small K~, V~. CPU (f32/f64) and CUDA
// (bf16/f16; attn::flash's head dims).
#pragma once
#include <memory>

#include "mixers/attention_core.h"

namespace lctx::dist {
class Mesh;
class Layout;
}  // namespace lctx::dist

namespace lctx::mixers {

struct LinformerMixerOptions {
  AttentionCoreOptions core;
  int64_t rows = 64;           // k: projected rows
  int64_t max_len = 0;         // n: columns of E and F, >= the layout's sequence length
  double softmax_scale = 0.0;  // 0: 1/sqrt(head_dim)
};

struct LinformerSaved final : Saved {
  QkvActs qkv;     // dropped by Pass::checkpoint, rebuilt by Pass::recompute
  Tensor kp, vp;   // K~, V~ [B, k, Hkv, hd], summed over the sp group (kept)
  Tensor o, lse;   // attention output [B, L, H, hd] and its f32 log-sum-exp [B, H, L] (kept)
  Tensor y;        // [B, L, D]
};

// The mesh (its sp group) and the layout must outlive the mixer.
std::unique_ptr<Mixer> make_linformer_mixer(const LinformerMixerOptions& o, dist::Mesh& mesh, const dist::Layout& layout);

}  // namespace lctx::mixers
