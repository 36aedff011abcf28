#include "mixers/local_global.h"

#include <algorithm>
#include <numeric>

#include "attn/block_select.h"
#include "attn/flash.h"
#include "attn/flash_few_keys.h"
#include "core/rng.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/ring_attention.h"
#include "dist/ring_kernels.h"
#include "dist/row_gather.h"
#include "mixers/attention_parts.h"
#include "ops/residual.h"

namespace lctx::mixers {

namespace {

class LocalGlobalMixer final : public Mixer {
 public:
  LocalGlobalMixer(const LocalGlobalOptions& o, dist::Mesh& mesh, const dist::Layout& layout)
      : o_(o), core_(o.core), mesh_(mesh), layout_(layout) {
    const int64_t S = layout.seq_len();
    LCTX_CHECK(o.core.position != Position::alibi, "local_global mixer: ALiBi is a bias on distances and the global ",
               "tokens have no position; use rope or none");
    LCTX_CHECK(o.window >= 1 && o.window <= S, "local_global mixer: window ", o.window, " must be in [1, ", S,
               "] (the sequence length)");
    LCTX_CHECK(o.global_tokens >= 0 && o.global_tokens <= S, "local_global mixer: ", o.global_tokens,
               " global tokens for a sequence of ", S, " positions (at most ", S, ")");
    LCTX_CHECK(o.first_tokens >= 0 && o.first_tokens <= S, "local_global mixer: first_tokens ", o.first_tokens,
               " must be in [0, ", S, "] (the sequence length)");
    LCTX_CHECK(o.form == LocalGlobalForm::causal || o.first_tokens == 0, "local_global mixer: first_tokens (",
               o.first_tokens, ") needs the causal form; the bidirectional form has learned global tokens only");
    LCTX_CHECK(mesh.shape().ulysses == 1, "local_global mixer: Ulysses is not supported (ulysses ",
               mesh.shape().ulysses, "); use a ring");
    LCTX_CHECK(layout.size() == mesh.sp().size(), "local_global mixer: layout ", layout.str(), " for an sp group of ",
               mesh.sp().size());
    LCTX_CHECK(o.random_blocks >= 0, "local_global mixer: mixer.local_global.random_blocks ", o.random_blocks,
               " must be >= 0");
    if (o.random_blocks > 0) {
      const int64_t rb = o.random_block_size, bad = rb >= 1 ? local_global_misfit_segment(layout, rb) : 0;
      LCTX_CHECK(rb >= 1 && rb <= S && bad == 0, "local_global mixer: mixer.local_global.random_block_size ", rb,
                 " must be in [1, ", S, "] and divide the layout's segment length (", bad, " in ", layout.str(), ")");
    }
    first_positions_.resize(static_cast<size_t>(o.first_tokens));
    std::iota(first_positions_.begin(), first_positions_.end(), int64_t{0});
  }

  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> p = core_.param_specs();
    // N(0, 1): rows like the RMS-normalised tokens the projections see.
    const auto init = [](Tensor& m, const InitContext& c) { rng_normal(m, c.seed, c.offset, 0.0, 1.0); };
    if (o_.global_tokens > 0)
      p.push_back({.name = "global_tokens",
                   .shape = {o_.global_tokens, o_.core.shape.dim},
                   .decay = Decay::none,
                   .init = Init::custom,
                   .custom = init});
    return p;
  }

  void bind(std::span<const Param> p) override {
    const size_t n = core_.param_specs().size(), want = param_specs().size();
    LCTX_CHECK(p.size() == want, "local_global mixer: bind got ", p.size(), " parameters, expected ", want);
    core_.bind(p.subspan(0, n));
    core_params_.assign(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(n));
    if (o_.global_tokens > 0) e_ = p[n];
  }

  Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) override {
    LCTX_CHECK(!in.doc_ids.defined(), "local_global mixer: packed documents (data.documents) are not supported");
    if (pass != Pass::recompute) saved = std::make_unique<LocalGlobalSaved>();
    auto& s = static_cast<LocalGlobalSaved&>(*saved);
    const bool fresh = pass != Pass::recompute;
    const int64_t B = in.x.size(0);
    core_.qkv_forward(s.qkv, in);
    if (g() > 0) core_.qkv_forward(s.glob, at_position_zero(e_.compute));
    if (o_.form == LocalGlobalForm::causal) {
      if (g() > 0) {
        s.glob_k = repeat_batch(s.glob.k, B);
        s.glob_v = repeat_batch(s.glob.v, B);
      }
      if (fresh && p() > 0) {
        s.first_k = dist::row_gather_forward(mesh_.sp(), layout_, s.qkv.k, first_positions_);
        s.first_v = dist::row_gather_forward(mesh_.sp(), layout_, s.qkv.v, first_positions_);
      }
    } else if (g() > 0) {
      if (fresh) stage1_forward(s, B);
      // h = global_tokens + o_g Wo^T, then its K/V at position 0.
      Tensor proj = Tensor::empty({B, g(), o_.core.shape.dim}, s.go.dtype(), s.go.device());
      core_.out_forward(proj, s.go);
      s.h = Tensor::empty(proj.shape(), proj.dtype(), proj.device());
      ops::residual_forward(s.h, proj, repeat_batch(e_.compute.view({1, g(), o_.core.shape.dim}), B));
      core_.qkv_forward(s.hkv, at_position_zero(s.h));
      s.glob_k = s.hkv.k;
      s.glob_v = s.hkv.v;
    }
    if (fresh && o_.random_blocks > 0) random_gather(s, B);
    if (fresh) attend_forward(s);
    s.y = Tensor::empty({B, in.x.size(1), o_.core.shape.dim}, in.x.dtype(), in.x.device());
    core_.out_forward(s.y, s.o);
    Tensor y = s.y;
    if (pass == Pass::checkpoint) {  // keep o, lse, first_k/v, go/glse
      s.qkv = {};
      s.glob = {};
      s.hkv = {};
      s.glob_k = s.glob_v = s.h = s.y = {};
    }
    return y;
  }

  void backward(Tensor& dx, const Tensor& dy, const Tokens& in, Saved& saved) override {
    auto& s = static_cast<LocalGlobalSaved&>(saved);
    const DType dt = s.o.dtype();
    Tensor d_o = Tensor::empty(s.o.shape(), dt, s.o.device());
    core_.out_backward(d_o, dy, s.o);  // Wo's gradient: written
    // The sequence part: the window by ring attention, then the global keys and first rows.
    attn::FlashGrads gr = dist::ring_attention_backward(mesh_.ring(), layout_, s.qkv.q, s.qkv.k, s.qkv.v, s.o, s.lse,
                                                        d_o, window_options(), dist::RingMode::ring,
                                                        attn::OutputDType::f32);
    const DType wd = gr.dq.dtype();
    Tensor dgk, dgv;  // the global K/V's gradients from this rank's queries, [B, g, Hkv, hd] wide
    if (g() > 0) {
      dgk = Tensor::zeros(s.glob_k.shape(), wd, s.o.device());
      dgv = Tensor::zeros(s.glob_k.shape(), wd, s.o.device());
      attn::flash_backward_few_keys(s.qkv.q, s.glob_k, s.glob_v, s.o, s.lse, d_o, plain_options(), {gr.dq, dgk, dgv});
    }
    if (p() > 0) first_backward(s, d_o, gr);
    if (!s.random_positions.empty()) random_backward(s, d_o, gr);

    if (o_.form == LocalGlobalForm::causal) {
      Tensor dq = cast(gr.dq, dt), dk = cast(gr.dk, dt), dv = cast(gr.dv, dt);
      core_.qkv_backward(dx, s.qkv, dq, dk, dv, in);  // Wqkv: written
      if (g() > 0) learned_kv_backward(core_, core_params_, s.glob, dgk, dgv, e_);
      return;
    }
    if (g() > 0) bidirectional_globals_backward(s, dgk, dgv, gr);
    Tensor dq = cast(gr.dq, dt), dk = cast(gr.dk, dt), dv = cast(gr.dv, dt);
    if (g() > 0)
      adding_grads(core_params_, [&] { core_.qkv_backward(dx, s.qkv, dq, dk, dv, in); });
    else
      core_.qkv_backward(dx, s.qkv, dq, dk, dv, in);
  }

  double flops_per_token(int64_t seq_len) const override {
    const HeadShape& s = o_.core.shape;
    const double w = static_cast<double>(std::min(o_.window, seq_len));
    // Keys per query; the bidirectional form's global queries add g keys per token (stage 1).
    const double keys = (o_.form == LocalGlobalForm::causal
                             ? w + static_cast<double>(g() + std::min(p(), seq_len))
                             : std::min(2 * w - 1, static_cast<double>(seq_len)) + 2.0 * static_cast<double>(g())) +
                        static_cast<double>(o_.random_blocks * o_.random_block_size);
    return core_.flops_per_token() + 6.0 * static_cast<double>(s.heads * s.head_dim) * keys;
  }

  void begin_step(int64_t step) override { step_ = step; }

 private:
  int64_t g() const { return o_.global_tokens; }
  int64_t p() const { return o_.first_tokens; }

  // Every key, fp32 partial outputs (merged by LSE).
  attn::FlashOptions plain_options() const {
    attn::FlashOptions f;
    f.softmax_scale = static_cast<float>(o_.softmax_scale);
    f.out_dtype = attn::OutputDType::f32;
    return f;
  }
  // The window: causal i - w < j <= i, or bidirectional |i - j| < w.
  attn::FlashOptions window_options() const {
    attn::FlashOptions f = plain_options();
    f.window_left = o_.window - 1;
    if (o_.form == LocalGlobalForm::causal) {
      f.mask = attn::Mask::causal;
    } else {
      f.window_right = o_.window - 1;
    }
    return f;
  }
  // The first p positions for a segment's queries: j <= i - w (causal with k_offset = w).
  attn::FlashOptions first_options(const dist::Segment& seg) const {
    attn::FlashOptions f = plain_options();
    f.mask = attn::Mask::causal;
    f.q_offset = seg.global_begin;
    f.k_offset = o_.window;
    return f;
  }
  // Whether any query of the segment sees a first position (j = 0 <= i - w).
  bool reaches_first(const dist::Segment& seg) const { return seg.global_begin + seg.length - 1 >= o_.window; }

  // o, lse of the sequence's queries: the window, then the global K/V, then the first rows.
  void attend_forward(LocalGlobalSaved& s) {
    const QkvActs& a = s.qkv;
    attn::FlashOutput acc = dist::ring_attention_forward(mesh_.ring(), layout_, a.q, a.k, a.v, window_options());
    if (g() > 0) {
      const attn::FlashOutput r = attn::flash_forward(a.q, s.glob_k, s.glob_v, plain_options());
      dist::merge_attention(acc.o, acc.lse, r.o, r.lse);
    }
    if (p() > 0)
      for (const dist::Segment& seg : layout_.segments(mesh_.sp().rank())) {
        if (!reaches_first(seg)) continue;
        const int64_t b = seg.local_begin, e = b + seg.length;
        const attn::FlashOutput r = attn::flash_forward(a.q.slice(1, b, e), s.first_k, s.first_v, first_options(seg));
        dist::merge_attention(acc.o.slice(1, b, e), acc.lse.slice(2, b, e), r.o, r.lse);
      }
    if (!s.random_positions.empty()) {
      const attn::FlashOutput r =
          attn::block_select_forward(a.q, s.random_k, s.random_v, s.random_blocks, plain_options());
      dist::merge_attention(acc.o, acc.lse, r.o, r.lse);
    }
    s.o = cast(acc.o, a.q.dtype());
    s.lse = acc.lse;
  }

  // The first rows' part of the backward: dq into gr.dq, their dK/dV summed into the owners'.
  void first_backward(const LocalGlobalSaved& s, const Tensor& d_o, attn::FlashGrads& gr) {
    const DType wd = gr.dq.dtype();
    Tensor dfk = Tensor::zeros(s.first_k.shape(), wd, s.o.device());
    Tensor dfv = Tensor::zeros(s.first_k.shape(), wd, s.o.device());
    for (const dist::Segment& seg : layout_.segments(mesh_.sp().rank())) {
      if (!reaches_first(seg)) continue;
      const int64_t b = seg.local_begin, e = b + seg.length;
      attn::flash_backward(s.qkv.q.slice(1, b, e), s.first_k, s.first_v, s.o.slice(1, b, e), s.lse.slice(2, b, e),
                           d_o.slice(1, b, e), first_options(seg), GradMode::accumulate,
                           {gr.dq.slice(1, b, e), dfk, dfv});
    }
    dist::row_gather_backward(mesh_.sp(), layout_, dfk, first_positions_, gr.dk);
    dist::row_gather_backward(mesh_.sp(), layout_, dfv, first_positions_, gr.dv);
  }

  // The random key blocks of this step: the K/V rows of the union of the blocks drawn for the
  // whole sequence (ascending), and this rank's query blocks' slots in them.
  void random_gather(LocalGlobalSaved& s, int64_t B) {
    const int64_t r = o_.random_blocks, rb = o_.random_block_size;
    const std::vector<int32_t> drawn = local_global_random_blocks(o_, layout_.seq_len(), step_);
    std::vector<int32_t> slot(static_cast<size_t>(layout_.seq_len() / rb), -1);
    for (const int32_t kb : drawn)
      if (kb >= 0) slot[static_cast<size_t>(kb)] = 0;
    s.random_positions.clear();
    for (size_t kb = 0; kb < slot.size(); ++kb) {
      if (slot[kb] < 0) continue;
      slot[kb] = static_cast<int32_t>(s.random_positions.size() / static_cast<size_t>(rb));
      for (int64_t i = 0; i < rb; ++i) s.random_positions.push_back(static_cast<int64_t>(kb) * rb + i);
    }
    if (s.random_positions.empty()) return;  // no query block has a candidate (the same on every rank)
    std::vector<int32_t> mine;  // [L / rb][r]: local query blocks in order
    for (const dist::Segment& seg : layout_.segments(mesh_.sp().rank()))
      for (int64_t q = seg.global_begin / rb; q < (seg.global_begin + seg.length) / rb; ++q)
        for (int64_t i = 0; i < r; ++i) {
          const int32_t kb = drawn[static_cast<size_t>(q * r + i)];
          mine.push_back(kb < 0 ? -1 : slot[static_cast<size_t>(kb)]);
        }
    const int64_t hkv = o_.core.shape.kv_heads;
    s.random_blocks = {.q_block = rb, .k_block = rb, .per_query = r, .index = {}};
    for (int64_t c = 0; c < B * hkv; ++c)
      s.random_blocks.index.insert(s.random_blocks.index.end(), mine.begin(), mine.end());
    s.random_k = dist::row_gather_forward(mesh_.sp(), layout_, s.qkv.k, s.random_positions);
    s.random_v = dist::row_gather_forward(mesh_.sp(), layout_, s.qkv.v, s.random_positions);
  }

  // The random blocks' part of the backward: dq into gr.dq, their dK/dV summed into the owners'.
  void random_backward(const LocalGlobalSaved& s, const Tensor& d_o, attn::FlashGrads& gr) {
    const DType wd = gr.dq.dtype();
    Tensor drk = Tensor::zeros(s.random_k.shape(), wd, s.o.device());
    Tensor drv = Tensor::zeros(s.random_k.shape(), wd, s.o.device());
    attn::block_select_backward(s.qkv.q, s.random_k, s.random_v, s.o, s.lse, d_o, s.random_blocks, plain_options(),
                                GradMode::accumulate, {gr.dq, drk, drv});
    dist::row_gather_backward(mesh_.sp(), layout_, drk, s.random_positions, gr.dk);
    dist::row_gather_backward(mesh_.sp(), layout_, drv, s.random_positions, gr.dv);
  }

  // Stage 1 of the bidirectional form: the global queries over every token of the sp group and
  // over the global tokens themselves, merged in rank order (the same bits on every rank).
  void stage1_forward(LocalGlobalSaved& s, int64_t B) {
    const Tensor qe = repeat_batch(s.glob.q, B), ke = repeat_batch(s.glob.k, B), ve = repeat_batch(s.glob.v, B);
    const attn::FlashOutput mine = attn::flash_forward(qe, s.qkv.k, s.qkv.v, plain_options());
    attn::FlashOutput acc = attn::flash_forward(qe, ke, ve, plain_options());
    dist::Comm& sp = mesh_.sp();
    const int R = sp.size();
    const Tensor mo = mine.o.contiguous(), ml = mine.lse.contiguous();
    Shape os = mo.shape(), ls = ml.shape();
    os.insert(os.begin(), R);
    ls.insert(ls.begin(), R);
    const Tensor all_o = Tensor::empty(os, mo.dtype(), mo.device()), all_l = Tensor::empty(ls, ml.dtype(), ml.device());
    sp.all_gather(mo, all_o);
    sp.all_gather(ml, all_l);
    for (int r = 0; r < R; ++r)
      dist::merge_attention(acc.o, acc.lse, dist::block_of(all_o, r), dist::block_of(all_l, r));
    s.go = cast(acc.o, s.qkv.q.dtype());
    s.glse = acc.lse;
  }

  // The bidirectional form's global tokens, backward: from the global K/V's gradients (this
  // rank's queries) through h to o_g, summed over the group; then stage 1 (dK/dV of this rank's
  // tokens into gr, the global tokens' part) and global_tokens' gradient.
  void bidirectional_globals_backward(LocalGlobalSaved& s, const Tensor& dgk, const Tensor& dgv, attn::FlashGrads& gr) {
    const DType dt = s.o.dtype();
    const Device dev = s.o.device();
    const int64_t B = s.o.size(0), D = o_.core.shape.dim;
    // Through h's projection (Wqkv: written here first) and its residual.
    Tensor dh = Tensor::empty({B, g(), D}, dt, dev);
    Tensor dq0 = Tensor::zeros(s.hkv.q.shape(), dt, dev), dk = dgk.to(dt), dv = dgv.to(dt);
    core_.qkv_backward(dh, s.hkv, dq0, dk, dv, at_position_zero(s.h));
    Tensor dgo = Tensor::empty(s.go.shape(), dt, dev);
    adding_grads(core_params_, [&] { core_.out_backward(dgo, dh, s.go); });
    Tensor de_sum = sum_batch(dh.to(wide_dtype(dt)));
    // d(o_g) of every rank's queries.
    Tensor dgo_all = dgo.to(wide_dtype(dt));
    mesh_.sp().all_reduce(dgo_all, dist::ReduceOp::sum);
    const Tensor dgo_total = cast(dgo_all, dt);
    // Stage 1: this rank's tokens, and (rank 0 only) the global tokens' own K/V.
    const Tensor qe = repeat_batch(s.glob.q, B), ke = repeat_batch(s.glob.k, B), ve = repeat_batch(s.glob.v, B);
    const DType wd = gr.dq.dtype();
    Tensor dqe = Tensor::zeros(qe.shape(), wd, dev), dke = Tensor::zeros(ke.shape(), wd, dev),
           dve = Tensor::zeros(ke.shape(), wd, dev);
    attn::flash_backward(qe, s.qkv.k, s.qkv.v, s.go, s.glse, dgo_total, plain_options(), GradMode::accumulate,
                         {dqe, gr.dk, gr.dv});
    if (mesh_.sp().rank() == 0)
      attn::flash_backward(qe, ke, ve, s.go, s.glse, dgo_total, plain_options(), GradMode::accumulate, {dqe, dke, dve});
    Tensor dq1 = sum_batch(dqe).to(dt), dk1 = sum_batch(dke).to(dt), dv1 = sum_batch(dve).to(dt);
    Tensor de = Tensor::empty({1, g(), D}, dt, dev);
    adding_grads(core_params_, [&] { core_.qkv_backward(de, s.glob, dq1, dk1, dv1, at_position_zero(e_.compute)); });
    de_sum.add_from(cast(de, wide_dtype(dt)));
    e_.grad.view({1, g(), D}).copy_from(de_sum);
  }

  LocalGlobalOptions o_;
  AttentionCore core_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
  std::vector<Param> core_params_;
  Param e_;                               // global_tokens [g, D] (g > 0)
  std::vector<int64_t> first_positions_;  // 0 .. p - 1
  int64_t step_ = 0;                      // the training step of the random blocks' draw (begin_step)
};

}  // namespace

std::vector<int32_t> local_global_random_blocks(const LocalGlobalOptions& o, int64_t seq_len, int64_t step) {
  const int64_t r = o.random_blocks, rb = o.random_block_size;
  LCTX_CHECK(r >= 0 && (r == 0 || (rb >= 1 && seq_len % rb == 0)), "local_global_random_blocks: ", r,
             " blocks of ", rb, " positions in a sequence of ", seq_len, " (rb must divide it)");
  if (r == 0) return {};
  const int64_t nb = seq_len / rb, w = o.window;
  std::vector<int32_t> out(static_cast<size_t>(nb * r), -1);
  const uint64_t seed = o.random_seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step);
  for (int64_t q = 0; q < nb; ++q) {
    // Left: blocks kb wholly before every query minus the window, (kb + 1) rb - 1 <= q rb - w,
    // and (causal) wholly at or after the first p positions. Right (bidirectional): kb rb >=
    // (q + 1) rb - 1 + w.
    const int64_t left_lo = o.form == LocalGlobalForm::causal ? (o.first_tokens + rb - 1) / rb : 0;
    const int64_t left_hi = std::max<int64_t>(0, (q * rb - w + 1) / rb);  // exclusive
    const int64_t n_left = std::max<int64_t>(0, left_hi - left_lo);
    const int64_t right_lo = ((q + 1) * rb - 1 + w + rb - 1) / rb;
    const int64_t n_right = o.form == LocalGlobalForm::causal ? 0 : std::max<int64_t>(0, nb - right_lo);
    const std::vector<int64_t> idx = attn::draw_distinct(seed, q, n_left + n_right, r);
    for (size_t i = 0; i < idx.size(); ++i)
      out[static_cast<size_t>(q * r) + i] =
          static_cast<int32_t>(idx[i] < n_left ? left_lo + idx[i] : right_lo + idx[i] - n_left);
  }
  return out;
}

int64_t local_global_misfit_segment(const dist::Layout& layout, int64_t rb) {
  for (int rank = 0; rank < layout.size(); ++rank)
    for (const dist::Segment& seg : layout.segments(rank))
      if (seg.length % rb != 0 || seg.global_begin % rb != 0) return seg.length;
  return 0;
}

std::unique_ptr<Mixer> make_local_global_mixer(const LocalGlobalOptions& o, dist::Mesh& mesh,
                                               const dist::Layout& layout) {
  return std::make_unique<LocalGlobalMixer>(o, mesh, layout);
}

}  // namespace lctx::mixers
