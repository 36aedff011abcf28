#include "trainers/model.h"

#include <cmath>
#include <limits>

#include "attn/flash.h"
#include "core/rng.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "ops/argmax.h"
#include "ops/common.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/residual.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "trainers/attention.h"

namespace lctx::train {

using ops::GradMode;

DType compute_dtype_for(const Config& cfg, Device device) {
  if (cfg.model.dtype == "f32") return DType::f32;
  if (cfg.model.dtype == "bf16") {
    LCTX_CHECK(device.is_cuda(), "model.dtype = bf16 needs a GPU; the CPU computes in f32");
    return DType::bf16;
  }
  return device.is_cuda() ? DType::bf16 : DType::f32;
}

namespace {

// Indices of a layer's parameters in Model::params_.
struct LayerParams {
  int attn_norm, wqkv, wo, mlp_norm, w_gate_up, w_down;
};

// Activations of one layer's forward. `x` (the layer input) and `attn` (the attention output
// and lse) are always kept; the rest is kept per layer, or lives in shared scratch for
// recomputed (checkpointed) layers, whose backward recomputes everything but the attention.
// The MLP of a recomputed layer runs in chunks of model.mlp_chunk tokens, so its widest
// activations (gate/up, SwiGLU output and their gradients) exist for one chunk at a time.
struct LayerActs {
  Tensor x;             // [B, S, D] input (residual stream)
  Tensor ln1, rstd1;    // [B, S, D], [B*S]
  Tensor qkv;           // [B, S, (H + 2 Hkv) hd]
  Tensor q, k, v;       // [B, S, H|Hkv, hd] (q, k after RoPE)
  AttnSaved attn;       // output o [B, S, H, hd] and whatever the kind needs for backward
  Tensor proj;          // [B, S, D] attention output projection
  Tensor x_mid;         // [B, S, D] x + proj
  Tensor ln2, rstd2;    // [B, S, D], [B*S]
  Tensor gu;            // [rows, 2F]: all B*S tokens, or one chunk (recomputed layers)
  Tensor act;           // [rows, F]
  Tensor mlp;           // [rows, D]
};

}  // namespace

struct Model::Impl {
  const Config& cfg;
  Device dev;
  DType dt;
  int64_t V, D, H, Hk, hd, F, L;
  int embedding = 0, final_norm = 0, head = 0;
  std::vector<LayerParams> lp;
  std::vector<std::unique_ptr<Attention>> attention;  // per layer
  Tensor alibi;                                       // f32 [H] or undefined
  StepProfile* profile = nullptr;

  void enter(Phase ph) {
    if (profile) profile->enter(ph);
  }

  // Buffers sized for the current batch shape (B, S); reallocated when it changes.
  int64_t B = -1, S = -1;
  std::vector<LayerActs> acts;  // per layer; recomputed layers only hold x and attn
  LayerActs scratch;            // forward buffers of recomputed layers
  Tensor x_final, lnf, rstdf, logits, predictions, losses, mean_loss;
  // Backward buffers.
  // (d(attention output) and d(qkv) live in the layer's proj and qkv buffers, which its
  // backward no longer reads.)
  Tensor dres, dtmp, dact, dgu, dln, dlnf;

  Impl(const Config& c, Device d, DType t) : cfg(c), dev(d), dt(t) {
    const auto& m = c.model;
    V = m.vocab_size, D = m.dim, H = m.n_heads, Hk = m.kv_heads(), hd = m.head_dim(), F = m.ffn_hidden(),
    L = m.n_layers;
  }

  bool recompute(int64_t l) const { return cfg.model.recompute(l); }
  // layer_forward's pass: the step's forward, or a recomputed layer's backward, which reuses
  // the kept attention output (the costliest part at long context runs once per step) and
  // stops before the MLP (layer_backward recomputes it chunk by chunk).
  enum class Pass { forward, recompute };

  // full: every activation, with MLP buffers of mlp_rows tokens.
  void alloc_layer(LayerActs& a, bool full, int64_t mlp_rows) {
    const int64_t N = B * S;
    a.x = Tensor::empty({B, S, D}, dt, dev);
    if (!full) return;
    const DType st = ops::grad_dtype(dt);
    a.ln1 = Tensor::empty({B, S, D}, dt, dev);
    a.rstd1 = Tensor::empty({N}, st, dev);
    a.qkv = Tensor::empty({B, S, (H + 2 * Hk) * hd}, dt, dev);
    a.q = Tensor::empty({B, S, H, hd}, dt, dev);
    a.k = Tensor::empty({B, S, Hk, hd}, dt, dev);
    a.v = Tensor::empty({B, S, Hk, hd}, dt, dev);
    a.proj = Tensor::empty({B, S, D}, dt, dev);
    a.x_mid = Tensor::empty({B, S, D}, dt, dev);
    a.ln2 = Tensor::empty({B, S, D}, dt, dev);
    a.rstd2 = Tensor::empty({N}, st, dev);
    a.gu = Tensor::empty({mlp_rows, 2 * F}, dt, dev);
    a.act = Tensor::empty({mlp_rows, F}, dt, dev);
    a.mlp = Tensor::empty({mlp_rows, D}, dt, dev);
  }

  void ensure_buffers(int64_t b, int64_t s) {
    if (b == B && s == S) return;
    B = b, S = s;
    const int64_t N = B * S;
    const DType st = ops::grad_dtype(dt);
    acts.assign(L, LayerActs{});
    bool any_recompute = false, any_kept = false;
    for (int64_t l = 0; l < L; ++l) {
      alloc_layer(acts[l], !recompute(l), N);
      any_recompute |= recompute(l);
      any_kept |= !recompute(l);
    }
    scratch = LayerActs{};
    const int64_t grad_rows = any_kept ? N : std::min(N, cfg.model.mlp_chunk);
    if (any_recompute) {
      alloc_layer(scratch, true, std::min(N, cfg.model.mlp_chunk));
      scratch.x = Tensor();
    }
    x_final = Tensor::empty({B, S, D}, dt, dev);
    lnf = Tensor::empty({B, S, D}, dt, dev);
    rstdf = Tensor::empty({N}, st, dev);
    logits = Tensor::empty({N, V}, dt, dev);
    predictions = Tensor::empty({N}, DType::i32, dev);
    losses = Tensor::empty({N}, st, dev);
    mean_loss = Tensor::empty({1}, st, dev);
    dres = Tensor::empty({B, S, D}, dt, dev);
    dtmp = Tensor::empty({B, S, D}, dt, dev);
    dact = Tensor::empty({grad_rows, F}, dt, dev);
    dgu = Tensor::empty({grad_rows, 2 * F}, dt, dev);
    dln = Tensor::empty({B, S, D}, dt, dev);
    dlnf = Tensor::empty({B, S, D}, dt, dev);
  }

  // Forward of layer l from a.x into `out` (the next layer's input); `a` receives every
  // activation (a's own buffers, or scratch with a.x set for recomputed layers).
  void layer_forward(const std::vector<Param>& P, int64_t l, LayerActs& a, Tensor& out, const Tensor& pos,
                     Pass pass = Pass::forward) {
    const LayerParams& p = lp[l];
    const auto& m = cfg.model;
    const float eps = static_cast<float>(m.norm_eps);
    ops::rmsnorm_forward(a.ln1, a.rstd1, a.x, P[p.attn_norm].compute, eps);
    ops::linear_forward(a.qkv, a.ln1, P[p.wqkv].compute, Tensor());
    const Tensor heads = a.qkv.view({B, S, H + 2 * Hk, hd});
    a.q.copy_from(heads.slice(2, 0, H));
    a.k.copy_from(heads.slice(2, H, H + Hk));
    a.v.copy_from(heads.slice(2, H + Hk, H + 2 * Hk));
    if (m.position == "rope") {
      ops::rope_forward(a.q, a.q, pos, m.rope_theta);
      ops::rope_forward(a.k, a.k, pos, m.rope_theta);
    }
    if (pass == Pass::forward) {
      enter(Phase::attention_forward);
      attention[l]->forward(a.attn, a.q, a.k, a.v);
      enter(Phase::forward);
    }
    ops::linear_forward(a.proj, a.attn.o.view({B, S, H * hd}), P[p.wo].compute, Tensor());
    ops::residual_forward(a.x_mid, a.x, a.proj);
    ops::rmsnorm_forward(a.ln2, a.rstd2, a.x_mid, P[p.mlp_norm].compute, eps);
    if (pass == Pass::recompute) return;
    for_mlp_chunks(a, [&](int64_t r0, int64_t r1, Tensor& gu, Tensor& act) {
      mlp_up(P, l, a, r0, r1, gu, act);
      Tensor mlp = a.mlp.slice(0, 0, r1 - r0), o = rows(out).slice(0, r0, r1);
      ops::linear_forward(mlp, act, P[lp[l].w_down].compute, Tensor());
      ops::residual_forward(o, rows(a.x_mid).slice(0, r0, r1), mlp);
    });
  }

  Tensor rows(const Tensor& t) const { return t.view({B * S, t.size(-1)}); }

  // Calls f(r0, r1, gu, act) for the token rows [r0, r1) of each MLP chunk of `a` (one chunk
  // of all B*S rows for kept layers), with gu/act the chunk's views of a's buffers.
  template <class Fn>
  void for_mlp_chunks(LayerActs& a, Fn&& f) {
    const int64_t N = B * S, C = a.gu.size(0);
    for (int64_t r0 = 0; r0 < N; r0 += C) {
      const int64_t r1 = std::min(N, r0 + C);
      Tensor gu = a.gu.slice(0, 0, r1 - r0), act = a.act.slice(0, 0, r1 - r0);
      f(r0, r1, gu, act);
    }
  }

  // gu, act = gate_up(ln2), swiglu(gu) for rows [r0, r1).
  void mlp_up(const std::vector<Param>& P, int64_t l, LayerActs& a, int64_t r0, int64_t r1, Tensor& gu, Tensor& act) {
    ops::linear_forward(gu, rows(a.ln2).slice(0, r0, r1), P[lp[l].w_gate_up].compute, Tensor());
    ops::swiglu_forward(act, gu);
  }

  // dres holds d(loss)/d(layer output) on entry and d(loss)/d(layer input) on exit.
  void layer_backward(std::vector<Param>& P, int64_t l, LayerActs& a, const Tensor& pos) {
    const LayerParams& p = lp[l];
    const auto& m = cfg.model;
    Tensor none;
    // MLP branch: out = x_mid + down(swiglu(gate_up(rmsnorm(x_mid)))).
    // Chunks of a recomputed layer recompute their gate/up and SwiGLU first; weight gradients
    // add up over the chunks.
    const bool chunked = recompute(l);
    for_mlp_chunks(a, [&](int64_t r0, int64_t r1, Tensor& gu, Tensor& act) {
      if (chunked) mlp_up(P, l, a, r0, r1, gu, act);
      const GradMode gm = r0 == 0 ? GradMode::overwrite : GradMode::accumulate;
      Tensor da = dact.slice(0, 0, r1 - r0), dg = dgu.slice(0, 0, r1 - r0), dl = rows(dln).slice(0, r0, r1);
      ops::linear_backward(da, P[p.w_down].grad, none, rows(dres).slice(0, r0, r1), act, P[p.w_down].compute, gm);
      ops::swiglu_backward(dg, da, gu);
      ops::linear_backward(dl, P[p.w_gate_up].grad, none, dg, rows(a.ln2).slice(0, r0, r1), P[p.w_gate_up].compute,
                           gm);
    });
    ops::rmsnorm_backward(dtmp, P[p.mlp_norm].grad, dln, a.x_mid, P[p.mlp_norm].compute, a.rstd2, GradMode::overwrite);
    ops::residual_backward(dres, none, dtmp, GradMode::accumulate);
    // Attention branch: x_mid = x + wo(attn(rope(q), rope(k), v)). The backward reads neither
    // proj nor qkv, so d(attention output) and d(qkv) are written over them.
    Tensor dattn_o = a.proj.view({B, S, H, hd}), dqkv = a.qkv;
    Tensor do_flat = a.proj;
    ops::linear_backward(do_flat, P[p.wo].grad, none, dres, a.attn.o.view({B, S, H * hd}), P[p.wo].compute,
                         GradMode::overwrite);
    Tensor dheads = dqkv.view({B, S, H + 2 * Hk, hd});
    Tensor dq = dheads.slice(2, 0, H), dk = dheads.slice(2, H, H + Hk), dv = dheads.slice(2, H + Hk, H + 2 * Hk);
    enter(Phase::attention_backward);
    AttnGrads g = attention[l]->backward(dattn_o, a.attn, a.q, a.k, a.v);
    enter(Phase::backward);
    if (m.position == "rope") {
      ops::rope_backward(g.dq, g.dq, pos, m.rope_theta);
      ops::rope_backward(g.dk, g.dk, pos, m.rope_theta);
    }
    dq.copy_from(g.dq);
    dk.copy_from(g.dk);
    dv.copy_from(g.dv);
    ops::linear_backward(dln, P[p.wqkv].grad, none, dqkv, a.ln1, P[p.wqkv].compute, GradMode::overwrite);
    ops::rmsnorm_backward(dtmp, P[p.attn_norm].grad, dln, a.x, P[p.attn_norm].compute, a.rstd1, GradMode::overwrite);
    ops::residual_backward(dres, none, dtmp, GradMode::accumulate);
  }

  // Embedding, all layers and the final norm: x_final, lnf.
  void trunk_forward(const std::vector<Param>& P, const Tensor& ids, const Tensor& pos) {
    ops::embedding_forward(acts[0].x, ids, P[embedding].compute);
    for (int64_t l = 0; l < L; ++l) {
      Tensor& out = l + 1 < L ? acts[l + 1].x : x_final;
      if (recompute(l)) {
        scratch.x = acts[l].x;
        layer_forward(P, l, scratch, out, pos);
        acts[l].attn = std::move(scratch.attn);  // kept for the backward
        scratch.attn = {};
      } else {
        layer_forward(P, l, acts[l], out, pos);
      }
    }
    enter(Phase::head_loss);
    ops::rmsnorm_forward(lnf, rstdf, x_final, P[final_norm].compute, static_cast<float>(cfg.model.norm_eps));
    ops::linear_forward(logits, lnf.view({B * S, D}), P[head].compute, Tensor());
  }

  // What training and evaluation share: the batch on the device, the trunk forward (logits)
  // and the argmax predictions, taken before a cross-entropy overwrites the logits.
  struct DeviceBatch {
    Tensor ids, pos, tgt;
  };
  DeviceBatch forward_batch(const std::vector<Param>& P, const Batch& b) {
    ensure_buffers(b.inputs.size(0), b.inputs.size(1));
    DeviceBatch d{b.inputs.to(dev), b.positions.to(dev), b.targets.to(dev)};
    trunk_forward(P, d.ids, d.pos);
    ops::argmax_rows(predictions, logits);
    return d;
  }

  // Sum of losses and correct argmax predictions over scored rows (targets != -1): the one
  // read of device results, at the end of the step (4 + 4 bytes per token reach the host).
  StepStats score(const Tensor& targets_host, int64_t scored) {
    StepStats st;
    st.scored = static_cast<double>(scored);
    st.correct = correct_predictions(targets_host);
    const Tensor lh = losses.device().is_cpu() ? losses : losses.to(Device::cpu());
    const Tensor lf = lh.dtype() == DType::f32 ? lh : lh.to(DType::f32);
    const float* lp_ = lf.data<float>();
    const int32_t* t = targets_host.data<int32_t>();
    double sum = 0;
    for (int64_t i = 0; i < B * S; ++i)
      if (t[i] >= 0) sum += lp_[i];
    st.loss_sum = sum;
    return st;
  }

  // Scored rows whose argmax prediction (forward_batch) is the target.
  double correct_predictions(const Tensor& targets_host) const {
    const Tensor ph = predictions.device().is_cpu() ? predictions : predictions.to(Device::cpu());
    const int32_t* t = targets_host.data<int32_t>();
    const int32_t* pred = ph.data<int32_t>();
    double correct = 0;
    for (int64_t i = 0; i < B * S; ++i)
      if (t[i] >= 0 && pred[i] == t[i]) correct += 1.0;
    return correct;
  }
};

Model::Model(const Config& cfg, Device device, dist::Mesh& mesh, const dist::Layout& layout)
    : cfg_(cfg), device_(device), dtype_(compute_dtype_for(cfg, device)) {
  impl_ = std::make_unique<Impl>(cfg_, device_, dtype_);
  Impl& I = *impl_;
  struct Spec {
    std::string name;
    Shape shape;
    bool decay;
  };
  std::vector<Spec> specs;
  auto add = [&](std::string name, Shape shape, bool decay) {
    specs.push_back({std::move(name), std::move(shape), decay});
    return static_cast<int>(specs.size() - 1);
  };
  I.embedding = add("embedding", {I.V, I.D}, true);
  for (int64_t l = 0; l < I.L; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerParams lp;
    lp.attn_norm = add(p + "attn_norm", {I.D}, false);
    lp.wqkv = add(p + "wqkv", {(I.H + 2 * I.Hk) * I.hd, I.D}, true);
    lp.wo = add(p + "wo", {I.D, I.H * I.hd}, true);
    lp.mlp_norm = add(p + "mlp_norm", {I.D}, false);
    lp.w_gate_up = add(p + "w_gate_up", {2 * I.F, I.D}, true);
    lp.w_down = add(p + "w_down", {I.D, I.F}, true);
    I.lp.push_back(lp);
  }
  I.final_norm = add("final_norm", {I.D}, false);
  I.head = cfg.model.tied_embeddings ? I.embedding : add("head", {I.V, I.D}, true);

  int64_t total = 0;
  for (const auto& s : specs) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    total += n;
  }
  flat_params_ = Tensor::zeros({total}, DType::f32, device_);
  flat_grads_ = Tensor::zeros({total}, DType::f32, device_);
  int64_t off = 0;
  for (const auto& s : specs) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    Param p;
    p.name = s.name;
    p.master = flat_params_.slice(0, off, off + n).view(s.shape);
    p.grad = flat_grads_.slice(0, off, off + n).view(s.shape);
    p.compute = dtype_ == DType::f32 ? p.master : Tensor::empty(s.shape, dtype_, device_);
    p.decay = s.decay;
    params_.push_back(std::move(p));
    off += n;
  }

  for (int64_t l = 0; l < I.L; ++l)
    I.attention.push_back(make_attention(cfg_, cfg_.attention.kind_of(l), mesh, layout));
  if (cfg.model.position == "alibi") {
    // Slopes 2^(-8 (h+1) / H') for the next power of two H' >= H, interleaved as in the ALiBi paper.
    std::vector<double> sl;
    int64_t p2 = 1;
    while (p2 * 2 <= I.H) p2 *= 2;
    for (int64_t h = 0; h < p2; ++h) sl.push_back(std::pow(2.0, -8.0 * static_cast<double>(h + 1) / static_cast<double>(p2)));
    for (int64_t h = 0; static_cast<int64_t>(sl.size()) < I.H; ++h)
      sl.push_back(std::pow(2.0, -4.0 * static_cast<double>(2 * h + 1) / static_cast<double>(p2)));
    I.alibi = Tensor::from_vector({I.H}, sl, DType::f32).to(device_);
    for (auto& a : I.attention) a->set_alibi(I.alibi);
  }
}

Model::~Model() = default;

void Model::init(uint64_t seed) {
  const auto& m = cfg_.model;
  const double out_std = m.init_std / std::sqrt(2.0 * static_cast<double>(m.n_layers));
  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = params_[i];
    if (p.master.dim() == 1) {
      p.master.fill(1.0);
    } else {
      const bool out_proj = p.name.ends_with(".wo") || p.name.ends_with(".w_down");
      // Offsets 2^40 apart: every parameter draws from its own part of the Philox stream.
      rng_normal(p.master, seed, static_cast<uint64_t>(i) << 40, 0.0, out_proj ? out_std : m.init_std);
    }
  }
  sync_compute_weights();
  flat_grads_.zero();
}

void Model::set_profile(StepProfile* profile) { impl_->profile = profile; }

void Model::sync_compute_weights() {
  if (dtype_ == DType::f32) return;
  for (auto& p : params_) p.compute.copy_from(p.master);
}

StepStats Model::forward_backward(const Batch& b, double loss_scale) {
  Impl& I = *impl_;
  const auto [ids, pos, tgt] = I.forward_batch(params_, b);
  // d(loss_scale * sum of scored losses): the op's gradient is scale / n_valid * sum.
  ops::CrossEntropyOptions ce;
  ce.ignore_index = -1;
  ce.loss_scale = static_cast<float>(loss_scale * static_cast<double>(b.scored));
  const Tensor tflat = tgt.view({I.B * I.S});
  ops::cross_entropy_forward_backward(I.losses, I.mean_loss, I.logits, I.logits, tflat, ce);

  Tensor none;
  const Param& head = params_[I.head];
  Tensor dlnf_flat = I.dlnf.view({I.B * I.S, I.D});
  ops::linear_backward(dlnf_flat, params_[I.head].grad, none, I.logits, I.lnf.view({I.B * I.S, I.D}), head.compute,
                       GradMode::overwrite);
  ops::rmsnorm_backward(I.dres, params_[I.final_norm].grad, I.dlnf, I.x_final, params_[I.final_norm].compute, I.rstdf,
                        GradMode::overwrite);
  I.enter(Phase::backward);
  for (int64_t l = I.L - 1; l >= 0; --l) {
    if (I.recompute(l)) {
      I.scratch.x = I.acts[l].x;
      I.scratch.attn = std::move(I.acts[l].attn);
      I.acts[l].attn = {};
      Tensor no_output;  // the recompute pass stops before the layer output
      I.layer_forward(params_, l, I.scratch, no_output, pos, Impl::Pass::recompute);
      I.layer_backward(params_, l, I.scratch, pos);
      I.scratch.attn = {};  // freed as the backward goes down the layers
    } else {
      I.layer_backward(params_, l, I.acts[l], pos);
    }
  }
  ops::embedding_backward(params_[I.embedding].grad, ids, I.dres,
                          cfg_.model.tied_embeddings ? GradMode::accumulate : GradMode::overwrite);
  return I.score(b.targets, b.scored);
}

StepStats Model::evaluate(const Batch& b) {
  Impl& I = *impl_;
  const Tensor tgt = I.forward_batch(params_, b).tgt;
  ops::CrossEntropyOptions ce;
  ce.ignore_index = -1;
  ops::cross_entropy_forward(I.losses, I.mean_loss, I.logits, tgt.view({I.B * I.S}), ce);
  return I.score(b.targets, b.scored);
}

}  // namespace lctx::train
