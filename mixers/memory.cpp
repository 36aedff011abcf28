#include "mixers/memory.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/phase_log.h"
#include "core/rng.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/ring_attention.h"
#include "dist/ring_kernels.h"
#include "mixers/attention_parts.h"
#include "mixers/block_means.h"
#include "mixers/cross_attention.h"
#include "ops/blend.h"
#include "ops/linear.h"

namespace lctx::mixers {

namespace {

class MemoryMixer final : public Mixer {
 public:
  MemoryMixer(const MemoryOptions& o, dist::Mesh& mesh, const dist::Layout& layout)
      : o_(o), core_(o.core), mesh_(mesh), layout_(layout) {
    const int64_t S = layout.seq_len();
    LCTX_CHECK(o.core.position != Position::alibi, "memory mixer: ALiBi is a bias on distances and the memory ",
               "tokens and compressed rows have none; use rope or none");
    LCTX_CHECK(o.window >= 1 && o.window <= S, "memory mixer: window ", o.window, " must be in [1, ", S,
               "] (the sequence length)");
    LCTX_CHECK(o.block >= 1 && o.block <= S, "memory mixer: block ", o.block, " must be in [1, ", S,
               "] (the sequence length)");
    LCTX_CHECK(o.memory_tokens >= 0, "memory mixer: memory_tokens ", o.memory_tokens, " must be >= 0");
    LCTX_CHECK(o.fusion_ratio >= 0.0 && o.fusion_ratio <= 1.0, "memory mixer: fusion_ratio ", o.fusion_ratio,
               " must be in [0, 1]");
    LCTX_CHECK(mesh.shape().ulysses == 1, "memory mixer: Ulysses is not supported (ulysses ", mesh.shape().ulysses,
               "); use a ring");
    LCTX_CHECK(layout.size() == mesh.sp().size(), "memory mixer: layout ", layout.str(), " for an sp group of ",
               mesh.sp().size());
    blocks_ = S / o.block;
    q_positions_ = layout.positions(mesh.sp().rank());
    block_positions_.resize(static_cast<size_t>(blocks_));
    for (int64_t c = 0; c < blocks_; ++c) block_positions_[static_cast<size_t>(c)] = (c + 1) * o.block;
  }

  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> p = core_.param_specs();
    const HeadShape& s = o_.core.shape;
    // N(0, 1): rows like the RMS-normalised tokens the projections see.
    const auto init = [](Tensor& m, const InitContext& c) { rng_normal(m, c.seed, c.offset, 0.0, 1.0); };
    if (M() > 0)
      p.push_back({.name = "memory_tokens",
                   .shape = {M(), s.dim},
                   .decay = Decay::none,
                   .init = Init::custom,
                   .custom = init});
    if (o_.fusion == MemoryFusion::gate) {
      p.push_back({.name = "w_gate", .shape = {s.heads, s.dim}});
      p.push_back({.name = "gate_bias", .shape = {s.heads}, .decay = Decay::none, .init = Init::zeros});
    }
    return p;
  }

  void bind(std::span<const Param> p) override {
    const size_t n = core_.param_specs().size(), want = param_specs().size();
    LCTX_CHECK(p.size() == want, "memory mixer: bind got ", p.size(), " parameters, expected ", want);
    core_.bind(p.subspan(0, n));
    core_params_.assign(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(n));
    size_t i = n;
    if (M() > 0) e_ = p[i++];
    if (o_.fusion == MemoryFusion::gate) w_gate_ = p[i], gate_bias_ = p[i + 1];
  }

  Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) override {
    LCTX_CHECK(!in.doc_ids.defined(), "memory mixer: packed documents (data.documents) are not supported");
    if (pass != Pass::recompute) saved = std::make_unique<MemorySaved>();
    auto& s = static_cast<MemorySaved&>(*saved);
    const int64_t B = in.x.size(0);
    core_.qkv_forward(s.qkv, in);
    if (M() > 0) {
      core_.qkv_forward(s.mem, at_position_zero(e_.compute));
      s.mem_k = repeat_batch(s.mem.k, B);
      s.mem_v = repeat_batch(s.mem.v, B);
    }
    if (pass != Pass::recompute) attend_forward(s);
    if (o_.fusion == MemoryFusion::gate) {
      s.gate = Tensor::empty({B, in.x.size(1), o_.core.shape.heads}, in.x.dtype(), in.x.device());
      ops::linear_forward(s.gate, in.x, w_gate_.compute, gate_bias_.compute);
    }
    s.o = Tensor::empty(s.o_local.shape(), s.o_local.dtype(), s.o_local.device());
    ops::blend_forward(s.o, s.o_local, s.o_memory, fusion(s));
    s.y = Tensor::empty({B, in.x.size(1), o_.core.shape.dim}, in.x.dtype(), in.x.device());
    core_.out_forward(s.y, s.o);
    Tensor y = s.y;
    if (pass == Pass::checkpoint) {  // keep o_local, o_memory, their lse and the compressed rows
      s.qkv = {};
      s.mem = {};
      s.mem_k = s.mem_v = s.gate = s.o = s.y = {};
    }
    return y;
  }

  void backward(Tensor& dx, const Tensor& dy, const Tokens& in, Saved& saved) override {
    auto& s = static_cast<MemorySaved&>(saved);
    const DType dt = s.o.dtype();
    const Device dev = s.o.device();
    Tensor d_o = Tensor::empty(s.o.shape(), dt, dev);
    core_.out_backward(d_o, dy, s.o);  // Wo's gradient: written
    ops::BlendGrads fg{Tensor::empty(s.o.shape(), dt, dev), Tensor::empty(s.o.shape(), dt, dev), Tensor()};
    if (o_.fusion == MemoryFusion::gate) fg.dz = Tensor::empty(s.gate.shape(), dt, dev);  // the gate's logits
    ops::blend_backward(fg, d_o, s.o_local, s.o_memory, fusion(s));
    const Tensor &d_local = fg.da, &d_memory = fg.db;

    const QkvActs& a = s.qkv;
    PhaseLog log("memory backward", dev);
    attn::FlashGrads gr = dist::ring_attention_backward(mesh_.ring(), layout_, a.q, a.k, a.v, s.o_local, s.lse_local,
                                                        d_local, window_options(), dist::RingMode::ring,
                                                        attn::OutputDType::f32);
    log.mark("window");
    const DType wd = gr.dq.dtype();
    Tensor dmk, dmv;  // the memory tokens' K/V gradients from this rank's queries [B, M, Hkv, hd]
    if (M() > 0) {
      dmk = Tensor::zeros(s.mem_k.shape(), wd, dev);
      dmv = Tensor::zeros(s.mem_k.shape(), wd, dev);
      cross_attention_backward(a.q, {}, s.mem_k, s.mem_v, {}, s.o_memory, s.lse_memory, d_memory, cross_options(),
                               {gr.dq, dmk, dmv});
      log.mark("memory_tokens");
    }
    compressed_backward(s, d_memory, gr);
    log.mark("compressed");

    Tensor dq = cast(gr.dq, dt), dk = cast(gr.dk, dt), dv = cast(gr.dv, dt);
    core_.qkv_backward(dx, s.qkv, dq, dk, dv, in);  // Wqkv: written
    if (M() > 0) learned_kv_backward(core_, core_params_, s.mem, dmk, dmv, e_);
    if (o_.fusion == MemoryFusion::gate) {
      Tensor dxg = Tensor::empty(dx.shape(), dx.dtype(), dev);
      ops::linear_backward(dxg, w_gate_.grad, gate_bias_.grad, fg.dz, in.x, w_gate_.compute, GradMode::overwrite);
      dx.add_from(dxg);
    }
  }

  double flops_per_token(int64_t seq_len) const override {
    const HeadShape& s = o_.core.shape;
    const double w = static_cast<double>(std::min(o_.window, seq_len));
    // Keys per query: the window, the memory tokens and on average half the compressed rows.
    const double keys = w + static_cast<double>(M()) + 0.5 * static_cast<double>(seq_len / o_.block);
    const double gate = o_.fusion == MemoryFusion::gate ? 6.0 * static_cast<double>(s.heads * s.dim) : 0.0;
    return core_.flops_per_token() + gate + 6.0 * static_cast<double>(s.heads * s.head_dim) * keys;
  }

 private:
  int64_t M() const { return o_.memory_tokens; }
  // r of o = (1 - r) o_local + r o_memory: sigmoid of the gate's logits, or fusion_ratio.
  ops::BlendWeight fusion(const MemorySaved& s) const { return {.logits = s.gate, .ratio = o_.fusion_ratio}; }

  // The window i - w < j <= i, fp32 partial output.
  attn::FlashOptions window_options() const {
    attn::FlashOptions f;
    f.softmax_scale = static_cast<float>(o_.softmax_scale);
    f.out_dtype = attn::OutputDType::f32;
    f.mask = attn::Mask::causal;
    f.window_left = o_.window - 1;
    return f;
  }
  CrossAttentionOptions cross_options() const { return {.softmax_scale = static_cast<float>(o_.softmax_scale)}; }

  // o_local, o_memory and their lse; the compressed rows.
  void attend_forward(MemorySaved& s) {
    const QkvActs& a = s.qkv;
    const DType dt = a.q.dtype();
    PhaseLog log("memory forward", a.q.device());
    const attn::FlashOutput local =
        dist::ring_attention_forward(mesh_.ring(), layout_, a.q, a.k, a.v, window_options());
    s.o_local = cast(local.o, dt);
    s.lse_local = local.lse;
    log.mark("window");
    compress(s);  // b <= S: at least one compressed row
    log.mark("compress");
    attn::FlashOutput mem =
        cross_attention_forward(a.q, q_positions_, s.comp_k, s.comp_v, block_positions_, cross_options());
    log.mark("compressed_attn");
    if (M() > 0) {
      const attn::FlashOutput t = cross_attention_forward(a.q, {}, s.mem_k, s.mem_v, {}, cross_options());
      dist::merge_attention(mem.o, mem.lse, t.o, t.lse);
      log.mark("memory_tokens");
    }
    s.o_memory = cast(mem.o, dt);
    s.lse_memory = mem.lse;
  }

  // The compressed rows: this rank's K/V rows summed into their blocks (times 1 / b), summed
  // over the sp group: every rank holds all S / b rows.
  void compress(MemorySaved& s) {
    const BlockRows c = block_means_forward(mesh_.sp(), s.qkv.k, s.qkv.v, block_index(s.qkv.k.device()), o_.block);
    s.comp_k = c.k;
    s.comp_v = c.v;
  }

  // The compressed rows' part of the backward: dq into gr.dq; their gradients of every rank's
  // queries summed over the group, 1 / b of each spread over the block's K/V rows this rank holds.
  void compressed_backward(const MemorySaved& s, const Tensor& d_memory, attn::FlashGrads& gr) {
    const Tensor& k = s.comp_k;
    const Tensor dc = Tensor::zeros({2, k.size(0), k.size(1), k.size(2), k.size(3)}, gr.dq.dtype(), k.device());
    cross_attention_backward(s.qkv.q, q_positions_, s.comp_k, s.comp_v, block_positions_, s.o_memory, s.lse_memory,
                             d_memory, cross_options(), {gr.dq, dist::block_of(dc, 0), dist::block_of(dc, 1)});
    block_means_backward(mesh_.sp(), dc, block_index(k.device()), o_.block, gr.dk, gr.dv);
  }

  // This rank's rows by block (built on first use on each device).
  const ops::RowBuckets& block_index(Device dev) {
    if (!block_ix_.bucket.defined() || block_ix_.bucket.device() != dev)
      block_ix_ = block_rows_index(q_positions_, o_.block, blocks_, dev);
    return block_ix_;
  }

  MemoryOptions o_;
  AttentionCore core_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
  std::vector<Param> core_params_;
  Param e_;                               // memory_tokens [M, D] (M > 0)
  Param w_gate_, gate_bias_;              // fusion: gate
  int64_t blocks_ = 0;                    // compressed rows: S / b
  std::vector<int64_t> q_positions_;      // this rank's global positions, local order
  std::vector<int64_t> block_positions_;  // (c + 1) b: the first query position that sees row c
  ops::RowBuckets block_ix_;              // block_index's cache
};

}  // namespace

std::unique_ptr<Mixer> make_memory_mixer(const MemoryOptions& o, dist::Mesh& mesh, const dist::Layout& layout) {
  return std::make_unique<MemoryMixer>(o, mesh, layout);
}

}  // namespace lctx::mixers
