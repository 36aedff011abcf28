#include "mixers/nsa.h"

#include <algorithm>
#include <array>
#include <span>
#include <vector>

#include "core/phase_log.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/ring_attention.h"
#include "dist/ring_kernels.h"
#include "dist/row_gather.h"
#include "mixers/attention_parts.h"
#include "mixers/block_means.h"
#include "mixers/block_mlp.h"
#include "mixers/cross_attention.h"
#include "mixers/nsa_scores.h"
#include "ops/gate_mix.h"
#include "ops/linear.h"

namespace lctx::mixers {

namespace {

constexpr int kBranches = 3;  // gate rows: compressed, selected, window

class NsaMixer final : public Mixer {
 public:
  NsaMixer(const NsaOptions& o, dist::Mesh& mesh, const dist::Layout& layout)
      : o_(o), core_(o.core), mesh_(mesh), layout_(layout) {
    const int64_t S = layout.seq_len();
    LCTX_CHECK(mesh.shape().ulysses == 1, "nsa mixer: Ulysses is not supported (ulysses ", mesh.shape().ulysses,
               "); use a ring");
    LCTX_CHECK(layout.size() == mesh.sp().size(), "nsa mixer: layout ", layout.str(), " for an sp group of ",
               mesh.sp().size());
    LCTX_CHECK(o.core.position != Position::alibi, "nsa mixer: ALiBi is a bias on distances and the compressed ",
               "rows have none; use rope or none");
    LCTX_CHECK(o.window >= 1 && o.window <= S, "nsa mixer: window ", o.window, " must be in [1, ", S,
               "] (the sequence length)");
    LCTX_CHECK(o.compress_block >= 1 && o.compress_block <= S, "nsa mixer: compress_block ", o.compress_block,
               " must be in [1, ", S, "] (the sequence length)");
    LCTX_CHECK(o.select_block >= 1 && o.select_block <= S, "nsa mixer: select_block ", o.select_block,
               " must be in [1, ", S, "] (the sequence length)");
    for (int r = 0; r < layout.size(); ++r)
      for (const dist::Segment& g : layout.segments(r))
        LCTX_CHECK(g.length % o.select_block == 0, "nsa mixer: select_block ", o.select_block,
                   " must divide the layout's segments (", layout.str(), " has segments of ", g.length,
                   " tokens) so that each query block lies on one rank");
    if (o.compress == NsaCompress::mlp) {
      LCTX_CHECK(o.compress_hidden >= 1, "nsa mixer: compress_hidden ", o.compress_hidden, " must be >= 1");
      for (int r = 0; r < layout.size(); ++r)
        for (const dist::Segment& g : layout.segments(r))
          LCTX_CHECK(g.length % o.compress_block == 0, "nsa mixer: compress_block ", o.compress_block,
                     " must divide the layout's segments with compress: mlp (", layout.str(), " has segments of ",
                     g.length, " tokens) so that each compressed block lies on one rank");
    }
    LCTX_CHECK(o.top_n >= 2 && o.top_n <= S / o.select_block, "nsa mixer: top_n ", o.top_n, " must be in [2, ",
               S / o.select_block, "] (block 0, the local block and the best others of the ", S / o.select_block,
               " selection blocks of ", o.select_block, " tokens)");
    compressed_ = S / o.compress_block;
    q_positions_ = layout.positions(mesh.sp().rank());
    for (int64_t c = 0; c < compressed_; ++c) cmp_positions_.push_back((c + 1) * o.compress_block - 1);
  }

  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> p = core_.param_specs();
    const HeadShape& s = o_.core.shape;
    p.push_back({.name = "w_gate", .shape = {kBranches * s.heads, s.dim}});
    p.push_back({.name = "gate_bias", .shape = {kBranches * s.heads}, .decay = Decay::none, .init = Init::zeros});
    if (o_.compress == NsaCompress::mlp) {
      const std::vector<ParamSpec> mlp =
          block_mlp_param_specs("cmp_", o_.compress_block, s.head_dim, o_.compress_hidden);
      p.insert(p.end(), mlp.begin(), mlp.end());
    }
    return p;
  }

  void bind(std::span<const Param> p) override {
    const size_t n = core_.param_specs().size(), want = param_specs().size();
    LCTX_CHECK(p.size() == want, "nsa mixer: bind got ", p.size(), " parameters, expected ", want);
    core_.bind(p.subspan(0, n));
    w_gate_ = p[n];
    gate_bias_ = p[n + 1];
    mlp_.assign(p.begin() + static_cast<std::ptrdiff_t>(n + 2), p.end());
  }

  Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) override {
    LCTX_CHECK(!in.doc_ids.defined(), "nsa mixer: packed documents (data.documents) are not supported");
    if (pass != Pass::recompute) saved = std::make_unique<NsaSaved>();
    auto& s = static_cast<NsaSaved&>(*saved);
    const int64_t B = in.x.size(0), L = in.x.size(1);
    core_.qkv_forward(s.qkv, in);
    if (pass != Pass::recompute) attend_forward(s);
    s.gate = Tensor::empty({B, L, kBranches * o_.core.shape.heads}, in.x.dtype(), in.x.device());
    ops::linear_forward(s.gate, in.x, w_gate_.compute, gate_bias_.compute);
    s.o = Tensor::empty(s.o_win.shape(), s.o_win.dtype(), s.o_win.device());
    ops::gate_mix_forward(s.o, branches(s), s.gate);
    s.y = Tensor::empty({B, L, o_.core.shape.dim}, in.x.dtype(), in.x.device());
    core_.out_forward(s.y, s.o);
    Tensor y = s.y;
    if (pass == Pass::checkpoint) {  // keep the branches, their lse and what was communicated
      s.qkv = {};
      s.gate = s.o = s.y = {};
    }
    return y;
  }

  void backward(Tensor& dx, const Tensor& dy, const Tokens& in, Saved& saved) override {
    auto& s = static_cast<NsaSaved&>(saved);
    const DType dt = s.o.dtype();
    const Device dev = s.o.device();
    Tensor d_o = Tensor::empty(s.o.shape(), dt, dev);
    core_.out_backward(d_o, dy, s.o);  // Wo's gradient: written
    const std::array<Tensor, kBranches> d = {Tensor::empty(s.o.shape(), dt, dev), Tensor::empty(s.o.shape(), dt, dev),
                                             Tensor::empty(s.o.shape(), dt, dev)};
    Tensor dz = Tensor::empty(s.gate.shape(), dt, dev);
    ops::gate_mix_backward(d, dz, d_o, branches(s), s.gate);

    const QkvActs& a = s.qkv;
    PhaseLog log("nsa backward", dev);
    attn::FlashGrads gr = dist::ring_attention_backward(mesh_.ring(), layout_, a.q, a.k, a.v, s.o_win, s.lse_win, d[2],
                                                        window_options(), dist::RingMode::ring, attn::OutputDType::f32);
    log.mark("window");
    compressed_backward(s, d[0], gr);
    log.mark("compressed");
    selected_backward(s, d[1], gr, log);
    log.mark("selected_blocks");

    Tensor dq = cast(gr.dq, dt), dk = cast(gr.dk, dt), dv = cast(gr.dv, dt);
    core_.qkv_backward(dx, s.qkv, dq, dk, dv, in);  // Wqkv: written
    Tensor dxg = Tensor::empty(dx.shape(), dx.dtype(), dev);
    ops::linear_backward(dxg, w_gate_.grad, gate_bias_.grad, dz, in.x, w_gate_.compute, GradMode::overwrite);
    dx.add_from(dxg);
  }

  double flops_per_token(int64_t seq_len) const override {
    const HeadShape& s = o_.core.shape;
    const double w = static_cast<double>(std::min(o_.window, seq_len));
    const double cmp = 0.5 * static_cast<double>(seq_len / o_.compress_block);
    // Keys per query: the window, on average half the compressed rows, n blocks of b_s; the
    // selection scores are one more pass over the compressed keys (forward only: 2 per MAC).
    const double keys = w + cmp + static_cast<double>(o_.top_n * o_.select_block);
    const double heads = static_cast<double>(s.heads * s.head_dim);
    // mlp: per KV head and block two compressors of (b_c + 1) hd hidden MACs, fwd + bwd.
    const double mlp = o_.compress == NsaCompress::mlp
                           ? 6.0 * 2.0 * static_cast<double>(s.kv_heads * (o_.compress_block + 1) * s.head_dim *
                                                             o_.compress_hidden) /
                                 static_cast<double>(o_.compress_block)
                           : 0.0;
    return core_.flops_per_token() + 6.0 * static_cast<double>(kBranches * s.heads * s.dim) + 6.0 * heads * keys +
           2.0 * heads * cmp + mlp;
  }

 private:
  static std::array<Tensor, kBranches> branches(const NsaSaved& s) { return {s.o_cmp, s.o_sel, s.o_win}; }

  attn::FlashOptions wide_options() const {
    attn::FlashOptions f;
    f.softmax_scale = static_cast<float>(o_.softmax_scale);
    f.out_dtype = attn::OutputDType::f32;
    return f;
  }
  // The window i - w < j <= i.
  attn::FlashOptions window_options() const {
    attn::FlashOptions f = wide_options();
    f.mask = attn::Mask::causal;
    f.window_left = o_.window - 1;
    return f;
  }
  // Each query block over its own rows, causal: the blocks folded into the batch, [B, L, H, hd]
  // seen as [B L / b_s, b_s, H, hd] (a block lies in one segment, so local order is global
  // order inside it): one plain causal call that cuDNN runs, no mask by ids.
  Tensor fold_blocks(const Tensor& x) const {
    const Shape& st = x.strides();
    const int64_t bs = o_.select_block, rows = x.size(0) * x.size(1);
    LCTX_CHECK(st[0] == x.size(1) * st[1], "nsa mixer: ", x.str(), " has batch rows apart (stride ", st[0],
               "); its query blocks do not fold into one batch");
    return x.as_strided({rows / bs, bs, x.size(2), x.size(3)}, {bs * st[1], st[1], st[2], st[3]});
  }
  // lse [B, H, L] seen in the folded call's order [B, L / b_s, H, b_s].
  Tensor fold_lse(const Tensor& lse) const {
    const Shape& st = lse.strides();
    const int64_t bs = o_.select_block;
    return lse.as_strided({lse.size(0), lse.size(2) / bs, lse.size(1), bs}, {st[0], bs * st[2], st[1], st[2]});
  }
  attn::FlashOptions local_options() const {
    attn::FlashOptions f = wide_options();
    f.mask = attn::Mask::causal;
    return f;
  }
  CrossAttentionOptions cross_options() const { return {.softmax_scale = static_cast<float>(o_.softmax_scale)}; }

  void attend_forward(NsaSaved& s) {
    const QkvActs& a = s.qkv;
    const DType dt = a.q.dtype();
    const Device dev = a.q.device();
    PhaseLog log("nsa forward", dev);
    const attn::FlashOutput win = dist::ring_attention_forward(mesh_.ring(), layout_, a.q, a.k, a.v, window_options());
    s.o_win = cast(win.o, dt);
    s.lse_win = win.lse;
    log.mark("window");

    const BlockRows c =
        o_.compress == NsaCompress::mlp
            ? block_mlp_forward(mesh_.sp(), a.k, a.v, q_positions_, o_.compress_block, compressed_,
                                block_mlp_view(mlp_, ParamPart::compute))
            : block_means_forward(mesh_.sp(), a.k, a.v, block_index(a.k.device()), o_.compress_block);
    s.comp_k = c.k;
    s.comp_v = c.v;
    log.mark("compress");
    const attn::FlashOutput cmp =
        cross_attention_forward(a.q, q_positions_, s.comp_k, s.comp_v, cmp_positions_, cross_options());
    s.o_cmp = cast(cmp.o, dt);
    s.lse_cmp = cmp.lse;
    log.mark("compressed_attn");
    select(s);
    log.mark("select");
    const attn::FlashOutput local =
        attn::flash_forward(fold_blocks(a.q), fold_blocks(a.k), fold_blocks(a.v), local_options());
    attn::FlashOutput sel{local.o.view(a.q.shape()),
                          Tensor::empty({a.q.size(0), a.q.size(2), a.q.size(1)}, local.lse.dtype(), dev)};
    Tensor sel_lse = fold_lse(sel.lse);
    sel_lse.copy_from(local.lse.view(sel_lse.shape()));
    log.mark("local_blocks");
    if (!s.sel.gathered.empty()) {
      s.sel_k = dist::row_gather_forward(mesh_.sp(), layout_, a.k, s.sel.positions);
      s.sel_v = dist::row_gather_forward(mesh_.sp(), layout_, a.v, s.sel.positions);
      log.mark("gather");
      const attn::FlashOutput far = attn::block_select_forward(a.q, s.sel_k, s.sel_v, s.sel.blocks, wide_options());
      dist::merge_attention(sel.o, sel.lse, far.o, far.lse);
      log.mark("selected_blocks");
    }
    s.o_sel = cast(sel.o, dt);
    s.lse_sel = sel.lse;
  }

  // The picks of this rank's query blocks; the union of every rank's picks (one all-reduce of a
  // bitmap) is what row_gather fetches.
  void select(NsaSaved& s) {
    const QkvActs& a = s.qkv;
    const int64_t B = a.q.size(0), Hk = a.k.size(2), bs = o_.select_block;
    const int64_t T = static_cast<int64_t>(q_positions_.size()) / bs, blocks = layout_.seq_len() / bs;
    const NsaScoring sc{.compress_block = o_.compress_block,
                        .select_block = bs,
                        .blocks = blocks,
                        .softmax_scale = static_cast<float>(o_.softmax_scale)};
    PhaseLog log("nsa select", a.q.device());
    const Tensor scores = nsa_selection_scores(a.q, s.comp_k, s.lse_cmp, q_positions_, sc);
    log.mark("scores");
    std::vector<int64_t> own(static_cast<size_t>(B * Hk * T));  // each row's query block
    for (size_t e = 0; e < own.size(); ++e) own[e] = q_positions_[static_cast<size_t>(e % T * bs)] / bs;
    const std::vector<int64_t> picks = nsa_pick_blocks(scores, own, o_.top_n);
    log.mark("pick");
    std::vector<std::vector<int64_t>> far(own.size());  // picks other than the local block
    std::vector<int64_t> wanted(static_cast<size_t>(blocks), 0);
    for (size_t e = 0; e < far.size(); ++e)
      for (int64_t i = 0; i < o_.top_n; ++i) {
        const int64_t j = picks[e * static_cast<size_t>(o_.top_n) + static_cast<size_t>(i)];
        if (j >= 0 && j != own[e]) {
          far[e].push_back(j);
          wanted[static_cast<size_t>(j)] = 1;
        }
      }
    mesh_.sp().all_reduce(std::span<int64_t>(wanted), dist::ReduceOp::max);
    NsaSelection& sel = s.sel;
    sel = {};
    std::vector<int32_t> slot(static_cast<size_t>(blocks), -1);
    for (int64_t j = 0; j < blocks; ++j)
      if (wanted[static_cast<size_t>(j)]) {
        slot[static_cast<size_t>(j)] = static_cast<int32_t>(sel.gathered.size());
        sel.gathered.push_back(j);
        for (int64_t p = j * bs; p < (j + 1) * bs; ++p) sel.positions.push_back(p);
      }
    sel.blocks = {.q_block = bs, .k_block = bs, .per_query = o_.top_n - 1, .index = {}};
    sel.blocks.index.assign(static_cast<size_t>(B * Hk * T * (o_.top_n - 1)), -1);
    for (size_t e = 0; e < far.size(); ++e)
      for (size_t i = 0; i < far[e].size(); ++i)
        sel.blocks.index[e * static_cast<size_t>(o_.top_n - 1) + i] = slot[static_cast<size_t>(far[e][i])];
  }

  // dq into gr.dq; the compressed rows' gradients summed over the group and spread over the
  // K/V rows of their blocks (mean), or back-propagated through this rank's blocks' MLP (mlp).
  void compressed_backward(const NsaSaved& s, const Tensor& d_cmp, attn::FlashGrads& gr) {
    const Tensor& k = s.comp_k;
    const Tensor dc = Tensor::zeros({2, k.size(0), k.size(1), k.size(2), k.size(3)}, gr.dq.dtype(), k.device());
    cross_attention_backward(s.qkv.q, q_positions_, s.comp_k, s.comp_v, cmp_positions_, s.o_cmp, s.lse_cmp, d_cmp,
                             cross_options(), {gr.dq, dist::block_of(dc, 0), dist::block_of(dc, 1)});
    if (o_.compress == NsaCompress::mlp)
      block_mlp_backward(mesh_.sp(), dc, s.qkv.k, s.qkv.v, q_positions_, o_.compress_block,
                         block_mlp_view(mlp_, ParamPart::compute), block_mlp_view(mlp_, ParamPart::grad), gr.dk,
                         gr.dv);
    else
      block_means_backward(mesh_.sp(), dc, block_index(k.device()), o_.compress_block, gr.dk, gr.dv);
  }

  // The local blocks' and the gathered blocks' parts; the gathered rows' gradients go back to
  // their owners.
  void selected_backward(const NsaSaved& s, const Tensor& d_sel, attn::FlashGrads& gr, PhaseLog& log) {
    const QkvActs& a = s.qkv;
    const Tensor lse = fold_lse(s.lse_sel).contiguous();
    const int64_t blocks = lse.size(0) * lse.size(1);
    attn::flash_backward(fold_blocks(a.q), fold_blocks(a.k), fold_blocks(a.v), fold_blocks(s.o_sel),
                         lse.view({blocks, lse.size(2), lse.size(3)}), fold_blocks(d_sel), local_options(),
                         GradMode::accumulate, {fold_blocks(gr.dq), fold_blocks(gr.dk), fold_blocks(gr.dv)});
    log.mark("local_blocks");
    if (s.sel.gathered.empty()) return;
    const Tensor dk = Tensor::zeros(s.sel_k.shape(), gr.dq.dtype(), s.sel_k.device());
    const Tensor dv = Tensor::zeros(s.sel_k.shape(), gr.dq.dtype(), s.sel_k.device());
    attn::block_select_backward(a.q, s.sel_k, s.sel_v, s.o_sel, s.lse_sel, d_sel, s.sel.blocks, wide_options(),
                                GradMode::accumulate, {gr.dq, dk, dv});
    dist::row_gather_backward(mesh_.sp(), layout_, dk, s.sel.positions, gr.dk);
    dist::row_gather_backward(mesh_.sp(), layout_, dv, s.sel.positions, gr.dv);
  }

  // This rank's rows by compression block (built on first use on each device).
  const ops::RowBuckets& block_index(Device dev) {
    if (!block_ix_.bucket.defined() || block_ix_.bucket.device() != dev)
      block_ix_ = block_rows_index(q_positions_, o_.compress_block, compressed_, dev);
    return block_ix_;
  }

  NsaOptions o_;
  AttentionCore core_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
  Param w_gate_, gate_bias_;
  std::vector<Param> mlp_;  // compress: mlp: the compression MLP's parameters (block_mlp_param_specs)
  int64_t compressed_ = 0;              // compressed rows: S / b_c
  std::vector<int64_t> q_positions_;    // this rank's global positions, local order
  std::vector<int64_t> cmp_positions_;  // (c + 1) b_c - 1: the first query position that sees row c
  ops::RowBuckets block_ix_;            // block_index's cache
};

}  // namespace

std::unique_ptr<Mixer> make_nsa_mixer(const NsaOptions& o, dist::Mesh& mesh, const dist::Layout& layout) {
  return std::make_unique<NsaMixer>(o, mesh, layout);
}

}  // namespace lctx::mixers
