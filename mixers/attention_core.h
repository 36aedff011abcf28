// AttentionCore: the part every attention-like kind shares (softmax now; linear attention,
// Performer, sparse and memory attention next): the fused q/k/v projection of the normalised
// stream, an optional short conv (a causal depthwise conv + SiLU over the projected q, k, v
// channels, as fla's linear-attention layers; mixers/segment_conv.h, sharded like the tokens),
// optional QK-norm (RMSNorm over each head's q and k with a weight shared by the heads, as
// Qwen3 / OLMo-2), RoPE at the tokens' positions (Tokens::positions: global, or inside each
// packed document), and the output projection. The kind supplies only what maps (q, k, v) to o
// per head, over the sequence-parallel group.
//   x [B, L, D] -> qkv = x Wqkv^T -> (short conv) -> q [B, L, H, hd], k, v [B, L, Hkv, hd]
//               -> (qk_norm) -> (RoPE on q, k) -> op -> o [B, L, H, hd] -> y = o Wo^T
// Per-head values of a kind (ALiBi slopes now, decays later) are sliced by HeadRange when the
// heads are computed in groups (head_groups), never set on the op.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "mixers/mixer.h"
#include "mixers/segment_conv.h"

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
  int64_t short_conv = 0;  // width of the short conv over q, k, v (2..ssm::kMaxConvWidth); 0: none
};

// The q/k/v activations of one forward.
struct QkvActs {
  Tensor qkv;                           // [B, L, (H + 2 Hkv) hd]; its backward writes d(qkv) here
  Tensor q, k, v;                       // [B, L, H|Hkv, hd], as the op reads them
  Tensor q_raw, k_raw, q_rstd, k_rstd;  // QK-norm only: its inputs and saved 1/rms
  Tensor qkv_in;                        // short conv only: the projection it reads
  std::vector<Tensor> conv_halo;        // short conv only: per local segment, the rows before it
};

class AttentionCore {
 public:
  explicit AttentionCore(const AttentionCoreOptions& o);
  // With a short conv (o.short_conv > 0): its halo runs over `sp` on `layout` (both outlive it).
  AttentionCore(const AttentionCoreOptions& o, dist::Comm& sp, const dist::Layout& layout);

  const AttentionCoreOptions& options() const { return o_; }
  std::vector<ParamSpec> param_specs() const;  // wqkv, wo [, q_norm, k_norm] [, conv_weight, conv_bias]
  void bind(std::span<const Param> params);

  // Projects, convolves, normalises and rotates (allocating a's tensors). With a short conv,
  // collective over sp (its halo).
  void qkv_forward(QkvActs& a, const Tokens& in) const;
  // From the op's gradients of q, k, v (contiguous; overwritten by the RoPE/QK-norm backward):
  // dx (overwritten) and the gradients of Wqkv, the QK-norm and short conv weights. a.qkv holds
  // d(qkv) after (the conv's output gradient with a short conv). Collective with a short conv.
  void qkv_backward(Tensor& dx, QkvActs& a, Tensor& dq, Tensor& dk, Tensor& dv, const Tokens& in);

  void out_forward(Tensor& y, const Tensor& o) const;  // y [B, L, D] = o Wo^T
  // d_o [B, L, H, hd] (overwritten) and dWo from dy.
  void out_backward(Tensor& d_o, const Tensor& dy, const Tensor& o);

  // Parameter FLOPs of forward + backward per token (6 per weight).
  double flops_per_token() const;

 private:
  int64_t qkv_channels() const;  // (H + 2 Hkv) hd

  AttentionCoreOptions o_;
  std::optional<SegmentConv> conv_;
  Param wqkv_, wo_, q_norm_, k_norm_, conv_w_, conv_b_;
};

}  // namespace lctx::mixers
