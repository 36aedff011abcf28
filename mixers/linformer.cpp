#include "mixers/linformer.h"

#include <cmath>

#include "attn/flash.h"
#include "core/rng.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "linear_attn/linformer.h"

namespace lctx::mixers {

namespace la = linear_attn;

namespace {

class LinformerMixer final : public Mixer {
 public:
  LinformerMixer(const LinformerMixerOptions& o, dist::Mesh& mesh, const dist::Layout& layout)
      : o_(o), core_(o.core), mesh_(mesh), layout_(layout) {
    LCTX_CHECK(o.core.position != Position::alibi, "linformer mixer: ALiBi is a per-pair bias and the projected rows ",
               "have no position; use rope or none");
    LCTX_CHECK(o.rows >= 1, "linformer mixer: k (projected rows) must be >= 1, got ", o.rows);
    LCTX_CHECK(layout.seq_len() <= o.max_len, "linformer mixer: the sequence has ", layout.seq_len(),
               " tokens but E and F are [k, n] with n = ", o.max_len, " (n must be at least the sequence length)");
  }

  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> p = core_.param_specs();
    // N(0, 1/n): a projected row starts as a random average over the sequence.
    const double std = 1.0 / std::sqrt(static_cast<double>(o_.max_len));
    const auto init = [std](Tensor& m, const InitContext& c) { rng_normal(m, c.seed, c.offset, 0.0, std); };
    for (const char* name : {"e", "f"})
      p.push_back({.name = name, .shape = {o_.rows, o_.max_len}, .init = Init::custom, .custom = init});
    return p;
  }

  void bind(std::span<const Param> p) override {
    const size_t n = core_.param_specs().size();
    LCTX_CHECK(p.size() == n + 2, "linformer mixer: bind got ", p.size(), " parameters, expected ", n + 2);
    core_.bind(p.subspan(0, n));
    e_ = p[n], f_ = p[n + 1];
  }

  Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) override {
    LCTX_CHECK(!in.doc_ids.defined(), "linformer mixer: packed documents (data.documents) are not supported: every ",
               "projected row mixes the whole sequence");
    if (pass != Pass::recompute) saved = std::make_unique<LinformerSaved>();
    auto& s = static_cast<LinformerSaved&>(*saved);
    core_.qkv_forward(s.qkv, in);
    if (pass != Pass::recompute) {
      s.kp = project(e_, s.qkv.k);
      s.vp = project(f_, s.qkv.v);
      const attn::FlashOutput r = attn::flash_forward(s.qkv.q, s.kp, s.vp, flash_options());
      s.o = r.o;
      s.lse = r.lse;
    }
    s.y = Tensor::empty({in.x.size(0), in.x.size(1), o_.core.shape.dim}, in.x.dtype(), in.x.device());
    core_.out_forward(s.y, s.o);
    Tensor y = s.y;
    if (pass == Pass::checkpoint) {  // keep o, lse, K~, V~
      s.qkv = {};
      s.y = {};
    }
    return y;
  }

  void backward(Tensor& dx, const Tensor& dy, const Tokens& in, Saved& saved) override {
    auto& s = static_cast<LinformerSaved&>(saved);
    Tensor d_o = Tensor::empty(s.o.shape(), s.o.dtype(), s.o.device());
    core_.out_backward(d_o, dy, s.o);
    attn::FlashGrads g = attn::flash_backward(s.qkv.q, s.kp, s.vp, s.o, s.lse, d_o, flash_options());
    Tensor dk = project_backward(e_, s.qkv.k, g.dk), dv = project_backward(f_, s.qkv.v, g.dv);
    core_.qkv_backward(dx, s.qkv, g.dq, dk, dv, in);
  }

  double flops_per_token(int64_t) const override {
    const HeadShape& s = o_.core.shape;
    const double k = static_cast<double>(o_.rows), hd = static_cast<double>(s.head_dim);
    // Scores and weighted sum over k rows (4 k hd per head), projecting K and V (4 k hd per
    // kv head); x3 for the backward.
    return core_.flops_per_token() + 3.0 * 4.0 * k * hd * static_cast<double>(s.heads + s.kv_heads);
  }

 private:
  attn::FlashOptions flash_options() const {
    attn::FlashOptions f;
    f.mask = attn::Mask::none;
    f.softmax_scale = static_cast<float>(o_.softmax_scale);
    return f;
  }

  // x~ = sum over the sp group of P[:, positions] x: [B, k, H, hd] (summed in the wide dtype).
  Tensor project(const Param& p, const Tensor& x) const {
    Tensor out = Tensor::zeros({x.size(0), o_.rows, x.size(2), x.size(3)}, wide_dtype(x.dtype()), x.device());
    for (const dist::Segment& g : layout_.segments(mesh_.sp().rank()))
      out.add_from(la::linformer_project(columns(p.compute, g), rows(x, g)));
    mesh_.sp().all_reduce(out, dist::ReduceOp::sum);
    return out.to(x.dtype());
  }

  // dx from this rank's d(x~) (summed over the sp group first); writes p's gradient (its
  // columns at this rank's positions, zeros elsewhere).
  Tensor project_backward(Param& p, const Tensor& x, const Tensor& dxp_local) const {
    Tensor sum = dxp_local.to(wide_dtype(dxp_local.dtype()));  // summed in the wide dtype
    mesh_.sp().all_reduce(sum, dist::ReduceOp::sum);
    const Tensor dxp = sum.to(x.dtype());
    Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
    p.grad.zero();
    for (const dist::Segment& g : layout_.segments(mesh_.sp().rank())) {
      const la::LinformerProjectGrads r = la::linformer_project_backward(columns(p.compute, g), rows(x, g), dxp);
      dx.slice(1, g.local_begin, g.local_begin + g.length).copy_from(r.dx);
      p.grad.slice(1, g.global_begin, g.global_begin + g.length).copy_from(r.dp_cols);
    }
    return dx;
  }

  static Tensor columns(const Tensor& p, const dist::Segment& g) {
    return p.slice(1, g.global_begin, g.global_begin + g.length).contiguous();
  }
  static Tensor rows(const Tensor& x, const dist::Segment& g) {
    return x.slice(1, g.local_begin, g.local_begin + g.length).contiguous();
  }

  LinformerMixerOptions o_;
  AttentionCore core_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
  Param e_, f_;
};

}  // namespace

std::unique_ptr<Mixer> make_linformer_mixer(const LinformerMixerOptions& o, dist::Mesh& mesh, const dist::Layout& layout) {
  return std::make_unique<LinformerMixer>(o, mesh, layout);
}

}  // namespace lctx::mixers
