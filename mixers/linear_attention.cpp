#include "mixers/linear_attention.h"

#include <cmath>

#include "dist/mesh.h"
#include "ops/linear.h"
#include "ops/log_sigmoid.h"
#include "ops/residual.h"
#include "ops/rmsnorm.h"
#include "ssm/segment_decay.h"

namespace lctx::mixers {

namespace la = linear_attn;
using ops::GradMode;

uint64_t favor_draw_seed(uint64_t seed, int64_t draw) {
  return seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(draw);
}

namespace {

// log lambda_h = log(1 - 2^(-5-h)): retention's per-head schedule (RetNet, Lightning).
double retention_log_decay(int64_t h) { return std::log1p(-std::exp2(-5.0 - static_cast<double>(h))); }

// y = log sigmoid(x) (wide dtype), and dL/dx in `dtype` from x and dL/dy (wide dtype).
Tensor log_sigmoid(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), wide_dtype(x.dtype()), x.device());
  ops::log_sigmoid_forward(y, x);
  return y;
}
Tensor log_sigmoid_backward(const Tensor& x, const Tensor& dy, DType dtype) {
  Tensor dx = Tensor::empty(x.shape(), wide_dtype(x.dtype()), x.device());
  ops::log_sigmoid_backward(dx, dy.contiguous(), x);
  return dx.to(dtype);
}

// Inverse sigmoid of the retention schedule: learned and data decays start there.
void init_retention_logits(Tensor& master) {
  std::vector<double> v;
  for (int64_t h = 0; h < master.numel(); ++h) v.push_back(-std::log(std::expm1(-retention_log_decay(h))));
  master.copy_from(Tensor::from_vector(master.shape(), v, master.dtype()));
}

class LinearAttentionMixer final : public Mixer {
 public:
  LinearAttentionMixer(const LinearAttentionOptions& o, dist::Mesh& mesh, const dist::Layout& layout)
      : o_(o), core_(o.core, mesh.sp(), layout), mesh_(mesh), layout_(layout) {
    LCTX_CHECK(o.core.position != Position::alibi, "linear attention mixer: ALiBi is a softmax bias; use rope or none");
    LCTX_CHECK(o.chunk >= 1, "linear attention mixer: chunk must be >= 1, got ", o.chunk);
    LCTX_CHECK(o.feature != la::FeatureKind::favor || o.features >= 1, "linear attention mixer: features must be >= 1, got ",
               o.features);
    LCTX_CHECK(o.redraw_every >= 0, "linear attention mixer: redraw_every must be >= 0, got ", o.redraw_every);
    kernel_.decay = o.decay;
    kernel_.normalize = o.normalize;
    kernel_.chunk = o.chunk;
    // FAVOR+ keeps the normaliser's eps: keys whose features underflow in fp32 (exponents far
    // below the stabiliser) leave a query with a zero normaliser, and eps turns 0/0 into 0.
    // The key stabiliser is an integer (piecewise constant), so its being held constant in the
    // backward stays exact.
  }

  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> p = core_.param_specs();
    const HeadShape& s = o_.core.shape;
    const auto retention = [](Tensor& m, const InitContext&) { init_retention_logits(m); };
    if (o_.decay == la::Decay::learned)
      p.push_back({.name = "decay_logit", .shape = {s.heads}, .decay = Decay::none, .init = Init::custom, .custom = retention});
    if (o_.decay == la::Decay::data) {
      p.push_back({.name = "w_gate", .shape = {s.heads, s.dim}});
      p.push_back({.name = "gate_bias", .shape = {s.heads}, .decay = Decay::none, .init = Init::custom, .custom = retention});
    }
    if (o_.output_norm == OutputNorm::rms)
      p.push_back({.name = "o_norm", .shape = {s.heads * s.head_dim}, .decay = Decay::none, .init = Init::ones});
    return p;
  }

  void bind(std::span<const Param> p) override {
    const size_t n = core_.param_specs().size();
    LCTX_CHECK(p.size() == param_specs().size(), "linear attention mixer: bind got ", p.size(), " parameters, expected ",
               param_specs().size());
    core_.bind(p.subspan(0, n));
    size_t i = n;
    if (o_.decay == la::Decay::learned) decay_logit_ = p[i++];
    if (o_.decay == la::Decay::data) w_gate_ = p[i], gate_bias_ = p[i + 1], i += 2;
    if (o_.output_norm == OutputNorm::rms) o_norm_ = p[i];
  }

  void begin_step(int64_t step) override { draw_ = o_.redraw_every > 0 ? step / o_.redraw_every : 0; }

  Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) override {
    LCTX_CHECK(!in.doc_ids.defined(), "linear attention mixer: packed documents (data.documents) are not supported: ",
               "the recurrent state would run across document starts");
    if (pass != Pass::recompute) saved = std::make_unique<LinearAttentionSaved>();
    auto& s = static_cast<LinearAttentionSaved&>(*saved);
    core_.qkv_forward(s.qkv, in);
    if (pass != Pass::recompute) s.key_stabiliser = key_stabiliser(s.qkv.k);
    s.fq = la::feature_map_forward(s.qkv.q, feature_map(s.qkv.q));
    s.fk = la::feature_map_forward(s.qkv.k, feature_map(s.qkv.k), s.key_stabiliser);
    decay_forward(s, in.x);
    if (pass != Pass::recompute) {
      s.o = Tensor::empty({in.x.size(0), in.x.size(1), o_.core.shape.heads, o_.core.shape.head_dim}, in.x.dtype(),
                          in.x.device());
      s.scan = dist::recurrent_forward(mesh_.sp(), layout_, segment_kernel(s, nullptr));
    }
    s.y = Tensor::empty({in.x.size(0), in.x.size(1), o_.core.shape.dim}, in.x.dtype(), in.x.device());
    core_.out_forward(s.y, output_norm_forward(s));
    Tensor y = s.y;
    if (pass == Pass::checkpoint) {  // keep o, the scan and the key stabiliser
      s.qkv = {};
      s.fq = s.fk = s.gate = s.log_decay = s.o_normed = s.o_rstd = s.y = Tensor();
    }
    return y;
  }

  void backward(Tensor& dx, const Tensor& dy, const Tokens& in, Saved& saved) override {
    auto& s = static_cast<LinearAttentionSaved&>(saved);
    Tensor d_o = Tensor::empty(s.o.shape(), s.o.dtype(), s.o.device());
    if (o_.output_norm == OutputNorm::rms) {
      Tensor d_normed = Tensor::empty(s.o.shape(), s.o.dtype(), s.o.device());
      core_.out_backward(d_normed, dy, s.o_normed);
      Tensor d_in = channels(d_o);
      ops::rmsnorm_backward(d_in, o_norm_.grad, channels(d_normed), channels(s.o), o_norm_.compute, s.o_rstd,
                            GradMode::overwrite, o_.core.shape.heads);
    } else {
      core_.out_backward(d_o, dy, s.o);
    }
    // Wide accumulators (Tensor::add_from's destinations are f32/f64), narrowed once summed.
    const auto zeros = [](const Tensor& t) { return Tensor::zeros(t.shape(), wide_dtype(t.dtype()), t.device()); };
    Grads g{zeros(s.fq), zeros(s.fk), zeros(s.qkv.v), s.log_decay.defined() ? zeros(s.log_decay) : Tensor(), d_o};
    dist::recurrent_backward(mesh_.sp(), layout_, segment_kernel(s, &g), s.scan);
    Tensor dq = la::feature_map_backward(s.qkv.q, g.dfq.to(s.fq.dtype()), feature_map(s.qkv.q));
    Tensor dk = la::feature_map_backward(s.qkv.k, g.dfk.to(s.fk.dtype()), feature_map(s.qkv.k), s.key_stabiliser);
    Tensor dv = g.dv.to(s.qkv.v.dtype());
    core_.qkv_backward(dx, s.qkv, dq, dk, dv, in);
    decay_backward(dx, s, g.d_log_decay, in.x);
  }

  double flops_per_token(int64_t seq_len) const override {
    const HeadShape& s = o_.core.shape;
    const double dk = static_cast<double>(o_.feature == la::FeatureKind::favor ? o_.features : s.head_dim);
    const double dv = static_cast<double>(s.head_dim + (o_.normalize == la::Normalize::on ? 1 : 0));
    const double chunk = static_cast<double>(std::min(o_.chunk, seq_len));
    // Per head and token: the state update and read (2 dk dv each) and the chunk's quadratic
    // part (chunk (dk + dv)); FAVOR+ projects q and k rows (2 m hd each); x3 for the backward.
    double f = 3.0 * static_cast<double>(s.heads) * (4.0 * dk * dv + chunk * (dk + dv));
    if (o_.feature == la::FeatureKind::favor)
      f += 6.0 * static_cast<double>(s.heads + s.kv_heads) * dk * static_cast<double>(s.head_dim);
    if (o_.decay == la::Decay::data) f += 6.0 * static_cast<double>(s.heads * (s.dim + 1));
    return core_.flops_per_token() + f;
  }

 private:
  // Gradients the segments' backward calls add into (whole local sequence).
  struct Grads {
    Tensor dfq, dfk, dv, d_log_decay;
    Tensor d_o;  // the outputs' gradient they read
  };

  // What the output projection reads: o, or o normalised per head (s.o_normed, s.o_rstd).
  const Tensor& output_norm_forward(LinearAttentionSaved& s) const {
    if (o_.output_norm == OutputNorm::off) return s.o;
    s.o_normed = Tensor::empty(s.o.shape(), s.o.dtype(), s.o.device());
    s.o_rstd = Tensor::empty({s.o.numel() / o_.core.shape.head_dim}, wide_dtype(s.o.dtype()), s.o.device());
    Tensor out = channels(s.o_normed);
    ops::rmsnorm_forward(out, s.o_rstd, channels(s.o), o_norm_.compute, static_cast<float>(o_.core.norm_eps),
                         o_.core.shape.heads);
    return s.o_normed;
  }
  // [B, L, H, hd] as [B, L, H hd] (the norm's channels, one group per head).
  static Tensor channels(const Tensor& t) { return t.view({t.size(0), t.size(1), t.size(2) * t.size(3)}); }

  // The map for q or k `x` (FAVOR+: W of the current draw in x's wide dtype, on x's device).
  la::FeatureMap feature_map(const Tensor& x) {
    la::FeatureMap fm;
    fm.kind = o_.feature;
    if (o_.feature != la::FeatureKind::favor) return fm;
    const DType wide = wide_dtype(x.dtype());
    if (!projection_.defined() || projection_.dtype() != wide || projection_.device() != x.device() ||
        projection_draw_ != draw_) {
      projection_ = la::favor_projection(o_.core.shape.head_dim, favor_draw_seed(o_.seed, draw_), o_.features, wide)
                        .to(x.device());
      projection_draw_ = draw_;
    }
    fm.projection = projection_;
    return fm;
  }

  // FAVOR+: the keys' stabiliser, one max over the whole sequence (all sp ranks).
  Tensor key_stabiliser(const Tensor& k) {
    if (o_.feature != la::FeatureKind::favor) return Tensor();
    Tensor c = la::favor_key_stabiliser(k, feature_map(k));
    mesh_.sp().all_reduce(c, dist::ReduceOp::max);
    return c;
  }

  // s.log_decay (and s.gate) for the configured decay.
  void decay_forward(LinearAttentionSaved& s, const Tensor& x) {
    const int64_t H = o_.core.shape.heads;
    switch (o_.decay) {
      case la::Decay::none: return;
      case la::Decay::fixed: {
        std::vector<double> v;
        for (int64_t h = 0; h < H; ++h) v.push_back(retention_log_decay(h));
        s.log_decay = Tensor::from_vector({H}, v, wide_dtype(x.dtype())).to(x.device());
        return;
      }
      case la::Decay::learned: s.log_decay = log_sigmoid(decay_logit_.compute); return;
      case la::Decay::data:
        s.gate = Tensor::empty({x.size(0), x.size(1), H}, x.dtype(), x.device());
        ops::linear_forward(s.gate, x, w_gate_.compute, gate_bias_.compute);
        s.log_decay = log_sigmoid(s.gate);
        return;
    }
  }

  // Adds the decay's input gradient into dx and writes its parameters' gradients.
  void decay_backward(Tensor& dx, const LinearAttentionSaved& s, const Tensor& d_log_decay, const Tensor& x) {
    if (o_.decay == la::Decay::learned)
      decay_logit_.grad.copy_from(log_sigmoid_backward(decay_logit_.compute, d_log_decay, decay_logit_.grad.dtype()));
    if (o_.decay != la::Decay::data) return;
    const Tensor dgate = log_sigmoid_backward(s.gate, d_log_decay, x.dtype());
    Tensor dxg = Tensor::empty(x.shape(), x.dtype(), x.device());
    ops::linear_backward(dxg, w_gate_.grad, gate_bias_.grad, dgate, x, w_gate_.compute, GradMode::overwrite);
    ops::residual_forward(dx, dx, dxg);  // dx += dxg in x's dtype
  }

  // The kernel on one segment (rows [local_begin, +length) of this rank's tokens). With `g`,
  // its backward adds into g; states are [B, H, Dk, Dv (+1)] viewed as the scan's [B, H, m].
  dist::SegmentKernel segment_kernel(LinearAttentionSaved& s, Grads* g) const {
    const auto inputs = [&s, this](const dist::Segment& seg, const Tensor& state0) {
      la::LinearAttnInputs in;
      in.q = rows(s.fq, seg), in.k = rows(s.fk, seg), in.v = rows(s.qkv.v, seg);
      if (s.log_decay.defined()) in.log_decay = o_.decay == la::Decay::data ? rows(s.log_decay, seg) : s.log_decay;
      if (state0.defined()) in.state0 = state0.view(state_shape(s));
      return in;
    };
    const auto flat = [](const Tensor& state) { return state.view({state.size(0), state.size(1), -1}); };
    dist::SegmentKernel k;
    k.forward = [&s, inputs, flat, this](const dist::Segment& seg, const Tensor& state0) {
      const la::LinearAttnOutput r = la::linear_attn_forward(inputs(seg, state0), kernel_);
      rows(s.o, seg).copy_from(r.o);
      return flat(r.final_state);
    };
    k.decay = [&s, this](const dist::Segment& seg) { return segment_decay(s, seg); };
    k.backward = [&s, g, inputs, flat, this](const dist::Segment& seg, const Tensor& state0, const Tensor& d_final,
                                               bool outputs) {
      const la::LinearAttnInputs in = inputs(seg, state0);
      const Tensor dout =
          outputs ? rows(g->d_o, seg) : Tensor::zeros(rows(g->d_o, seg).shape(), g->d_o.dtype(), g->d_o.device());
      const Tensor dfin = d_final.defined() ? d_final.view(state_shape(s)) : Tensor();
      const la::LinearAttnGrads r = la::linear_attn_backward(in, dout, dfin, kernel_);
      rows(g->dfq, seg).add_from(r.dq);
      rows(g->dfk, seg).add_from(r.dk);
      rows(g->dv, seg).add_from(r.dv);
      if (o_.decay == la::Decay::data) rows(g->d_log_decay, seg).add_from(r.d_log_decay);
      if (o_.decay == la::Decay::learned) g->d_log_decay.add_from(r.d_log_decay);
      return flat(r.d_state0);
    };
    return k;
  }

  Shape state_shape(const LinearAttentionSaved& s) const {
    return {s.fq.size(0), o_.core.shape.heads, s.fq.size(3), state_cols()};
  }
  int64_t state_cols() const { return o_.core.shape.head_dim + (o_.normalize == la::Normalize::on ? 1 : 0); }

  // a [B, H] of a segment: exp of the sum of its log-decays (ones without decay).
  Tensor segment_decay(const LinearAttentionSaved& s, const dist::Segment& seg) const {
    const int64_t B = s.fq.size(0), H = o_.core.shape.heads;
    const DType dt = wide_dtype(s.fq.dtype());
    const Device dev = s.fq.device();
    switch (o_.decay) {
      case la::Decay::none: return Tensor::full({B, H}, 1.0, dt, dev);
      case la::Decay::fixed:
      case la::Decay::learned:  // exp(length * log_decay[h])
        return ssm::segment_decay(Tensor::full({B, 1, H}, static_cast<double>(seg.length), dt, dev), Tensor(),
                                  s.log_decay, ssm::Softplus::off);
      case la::Decay::data:
        return ssm::segment_decay(rows(s.log_decay, seg), Tensor(),
                                  Tensor::full({H}, 1.0, dt, dev), ssm::Softplus::off);
    }
    LCTX_FAIL("linear attention mixer: unknown decay");
  }

  LinearAttentionOptions o_;
  AttentionCore core_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
  la::LinearAttnOptions kernel_;
  Param decay_logit_, w_gate_, gate_bias_, o_norm_;
  int64_t draw_ = 0;             // FAVOR+ draw number (begin_step)
  Tensor projection_;            // FAVOR+ W of draw projection_draw_
  int64_t projection_draw_ = -1;
};

}  // namespace

std::unique_ptr<Mixer> make_linear_attention_mixer(const LinearAttentionOptions& o, dist::Mesh& mesh,
                                                   const dist::Layout& layout) {
  return std::make_unique<LinearAttentionMixer>(o, mesh, layout);
}

}  // namespace lctx::mixers
