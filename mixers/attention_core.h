// AttentionCore: the part every attention-like kind shares (softmax now; linear attention,
// Performer, sparse and memory attention next): the fused q/k/v projection of the normalised
// stream, optional QK-norm (RMSNorm over each head's q and k with a weight shared by the heads,
// as Qwen3 / OLMo-2), RoPE at the tokens' positions (Tokens::positions: global, or inside each
// packed document), and the output projection. The kind supplies only what maps (q, k, v) to o
// per head, over the sequence-parallel group.
//   x [B, L, D] -> qkv = x Wqkv^T -> q [B, L, H, hd], k, v [B, L, Hkv, hd]
//               -> (qk_norm) -> (RoPE on q, k) -> op -> o [B, L, H, hd] -> y = o Wo^T
// Per-head values of a kind (ALiBi slopes now, decays later) are sliced by HeadRange when the
// heads are computed in groups (head_groups), never set on the op.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "mixers/mixer.h"

namespace lctx::mixers {

enum class Position { rope, alibi, none };
enum class QkNorm { off, rms };

struct HeadShape {
  int64_t dim = 0;       // model width D
  int64_t heads = 0;     // query heads H
  int64_t kv_heads = 0;  // key/value heads (GQA/MQA: divides H)
  int64_t head_dim = 0;  // hd (H * hd need not equal D)
};

struct HeadRange {  // query heads [first, first + count)
  int64_t first = 0, count = 0;
};

struct AttentionCoreOptions {
  HeadShape shape;
  Position position = Position::rope;
  double rope_theta = 10000.0;
  QkNorm qk_norm = QkNorm::off;
  double norm_eps = 1e-5;  // QK-norm epsilon
};

// The q/k/v activations of one forward.
struct QkvActs {
  Tensor qkv;                           // [B, L, (H + 2 Hkv) hd]; its backward writes d(qkv) here
  Tensor q, k, v;                       // [B, L, H|Hkv, hd], as the op reads them
  Tensor q_raw, k_raw, q_rstd, k_rstd;  // QK-norm only: its inputs and saved 1/rms
};

class AttentionCore {
 public:
  explicit AttentionCore(const AttentionCoreOptions& o);

  const AttentionCoreOptions& options() const { return o_; }
  std::vector<ParamSpec> param_specs() const;  // wqkv, wo [, q_norm, k_norm]
  void bind(std::span<const Param> params);

  // Projects, normalises and rotates (allocating a's tensors).
  void qkv_forward(QkvActs& a, const Tokens& in) const;
  // From the op's gradients of q, k, v (contiguous; overwritten by the RoPE/QK-norm backward):
  // dx (overwritten) and the gradients of Wqkv and the QK-norm weights. a.qkv holds d(qkv) after.
  void qkv_backward(Tensor& dx, QkvActs& a, Tensor& dq, Tensor& dk, Tensor& dv, const Tokens& in);

  void out_forward(Tensor& y, const Tensor& o) const;  // y [B, L, D] = o Wo^T
  // d_o [B, L, H, hd] (overwritten) and dWo from dy.
  void out_backward(Tensor& d_o, const Tensor& dy, const Tensor& o);

  // Parameter FLOPs of forward + backward per token (6 per weight).
  double flops_per_token() const;

 private:
  AttentionCoreOptions o_;
  Param wqkv_, wo_, q_norm_, k_norm_;
};

}  // namespace lctx::mixers
