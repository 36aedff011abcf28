#include "trainers/model.h"

#include "dist/layout.h"
#include "dist/mesh.h"
#include "mixers/mixer.h"
#include "ops/argmax.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/residual.h"
#include "ops/rmsnorm.h"
#include "ops/swiglu.h"
#include "trainers/mixer_registry.h"

namespace lctx::train {

using mixers::Pass;
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

// Indices of a layer's parameters in the table; the mixer's own follow mixer_norm.
struct LayerParams {
  size_t mixer_norm, mixer_first, mixer_count, mlp_norm, w_gate_up, w_down;
};

// Activations of one layer's forward. `x` (the layer input) and the mixer's saved struct are
// always kept; the rest is kept per layer, or lives in shared scratch for recomputed
// (checkpointed) layers, whose mixer keeps only what it cannot cheaply redo. The MLP of a
// recomputed layer runs in chunks of model.mlp_chunk tokens, so its widest activations
// (gate/up, SwiGLU output and their gradients) exist for one chunk at a time.
struct LayerActs {
  Tensor x;                              // [B, S, D] input (residual stream)
  Tensor ln1, rstd1;                     // [B, S, D], [B*S]: the mixer's input
  std::unique_ptr<mixers::Saved> mixer;  // what the mixer's backward reads
  Tensor x_mid;                          // [B, S, D] x + mixer(ln1)
  Tensor ln2, rstd2;                     // [B, S, D], [B*S]
  Tensor gu;                             // [rows, 2F]: all B*S tokens, or one chunk (recomputed layers)
  Tensor act;                            // [rows, F]
  Tensor mlp;                            // [rows, D]
};

}  // namespace

struct Model::Impl {
  const Config& cfg;
  Device dev;
  DType dt;
  int64_t V, D, F, L;
  size_t embedding = 0, final_norm = 0, head = 0;
  std::vector<LayerParams> lp;
  std::vector<std::unique_ptr<mixers::Mixer>> mixer;  // per layer
  StepProfile* profile = nullptr;

  void enter(Phase ph) {
    if (profile) profile->enter(ph);
  }

  // Buffers sized for the current batch shape (B, S); reallocated when it changes.
  int64_t B = -1, S = -1;
  std::vector<LayerActs> acts;  // per layer; recomputed layers only hold x and the mixer's saved struct
  LayerActs scratch;            // forward buffers of recomputed layers
  Tensor x_final, lnf, rstdf, logits, predictions, losses, mean_loss;
  // Backward buffers.
  Tensor dres, dtmp, dact, dgu, dln, dlnf;

  Impl(const Config& c, Device d, DType t) : cfg(c), dev(d), dt(t) {
    const auto& m = c.model;
    V = m.vocab_size, D = m.dim, F = m.ffn_hidden(), L = m.n_layers;
  }

  bool recompute(int64_t l) const { return cfg.model.recompute(l); }

  // full: every activation, with MLP buffers of mlp_rows tokens.
  void alloc_layer(LayerActs& a, bool full, int64_t mlp_rows) {
    const int64_t N = B * S;
    a.x = Tensor::empty({B, S, D}, dt, dev);
    if (!full) return;
    const DType st = wide_dtype(dt);
    a.ln1 = Tensor::empty({B, S, D}, dt, dev);
    a.rstd1 = Tensor::empty({N}, st, dev);
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
    const DType st = wide_dtype(dt);
    acts.clear();
    acts.resize(L);
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
  // activation (a's own buffers, or scratch with a.x set for recomputed layers). With
  // Pass::recompute (before a recomputed layer's backward) it stops before the MLP, which
  // layer_backward recomputes chunk by chunk.
  void layer_forward(const std::vector<Param>& P, int64_t l, LayerActs& a, Tensor& out, const mixers::Tokens& seq,
                     Pass pass) {
    const LayerParams& p = lp[l];
    const float eps = static_cast<float>(cfg.model.norm_eps);
    ops::rmsnorm_forward(a.ln1, a.rstd1, a.x, P[p.mixer_norm].compute, eps);
    if (pass != Pass::recompute) enter(Phase::mixer_forward);
    const Tensor y = mixer[l]->forward(mixer_input(a, seq), a.mixer, pass);
    if (pass != Pass::recompute) enter(Phase::forward);
    ops::residual_forward(a.x_mid, a.x, y);
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

  // The mixer's input: the layer's normalised stream with the batch's positions and documents.
  static mixers::Tokens mixer_input(const LayerActs& a, const mixers::Tokens& seq) {
    mixers::Tokens in = seq;
    in.x = a.ln1;
    return in;
  }

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
  void layer_backward(std::vector<Param>& P, int64_t l, LayerActs& a, const mixers::Tokens& seq) {
    const LayerParams& p = lp[l];
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
    // Mixer branch: x_mid = x + mixer(rmsnorm(x)).
    enter(Phase::mixer_backward);
    mixer[l]->backward(dln, dres, mixer_input(a, seq), *a.mixer);
    enter(Phase::backward);
    ops::rmsnorm_backward(dtmp, P[p.mixer_norm].grad, dln, a.x, P[p.mixer_norm].compute, a.rstd1, GradMode::overwrite);
    ops::residual_backward(dres, none, dtmp, GradMode::accumulate);
  }

  // Embedding, all layers and the final norm: x_final, lnf. `keep`: Pass::train for a training
  // step (recomputed layers checkpoint), Pass::checkpoint for evaluation (nothing kept).
  void trunk_forward(const std::vector<Param>& P, const Tensor& ids, const mixers::Tokens& seq, Pass keep) {
    ops::embedding_forward(acts[0].x, ids, P[embedding].compute);
    for (int64_t l = 0; l < L; ++l) {
      Tensor& out = l + 1 < L ? acts[l + 1].x : x_final;
      if (recompute(l)) {
        scratch.x = acts[l].x;
        layer_forward(P, l, scratch, out, seq, Pass::checkpoint);
        acts[l].mixer = std::move(scratch.mixer);  // kept for the backward
      } else {
        layer_forward(P, l, acts[l], out, seq, keep);
      }
    }
    enter(Phase::head_loss);
    ops::rmsnorm_forward(lnf, rstdf, x_final, P[final_norm].compute, static_cast<float>(cfg.model.norm_eps));
    ops::linear_forward(logits, lnf.view({B * S, D}), P[head].compute, Tensor());
  }

  // What training and evaluation share: the batch on the device, the trunk forward (logits)
  // and the argmax predictions, taken before a cross-entropy overwrites the logits. `seq` is
  // what every mixer sees besides its input: positions and packed documents (x undefined).
  struct DeviceBatch {
    Tensor ids, tgt;
    mixers::Tokens seq;
  };
  DeviceBatch forward_batch(const std::vector<Param>& P, const Batch& b, Pass keep) {
    ensure_buffers(b.inputs.size(0), b.inputs.size(1));
    DeviceBatch d{b.inputs.to(dev), b.targets.to(dev),
                  {Tensor(), b.positions.to(dev), b.doc_ids.defined() ? b.doc_ids.to(dev) : Tensor(), b.documents}};
    trunk_forward(P, d.ids, d.seq, keep);
    ops::argmax_rows(predictions, logits);
    return d;
  }

  // Sum of losses and correct argmax predictions over scored rows (targets != -1): the one
  // read of device results, at the end of the step (4 + 4 bytes per token reach the host).
  StepStats score(const Tensor& targets_host, int64_t scored) {
    StepStats st;
    st.scored = static_cast<double>(scored);
    st.correct = correct_predictions(targets_host);
    const Tensor lf = token_losses();
    const float* lp_ = lf.data<float>();
    const int32_t* t = targets_host.data<int32_t>();
    double sum = 0;
    for (int64_t i = 0; i < B * S; ++i)
      if (t[i] >= 0) sum += lp_[i];
    st.loss_sum = sum;
    return st;
  }

  // The per-token losses of the last cross-entropy: a copy, f32 [B, S] on the CPU.
  Tensor token_losses() const {
    const Tensor l = losses.to(Device::cpu()).to(DType::f32);
    return (l.raw() == losses.raw() ? l.clone() : l).view({B, S});
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
  using mixers::Decay;
  using mixers::Init;
  const auto norm = [&](const char* name) {
    return mixers::ParamSpec{.name = name, .shape = {I.D}, .decay = Decay::none, .init = Init::ones};
  };
  I.embedding = table_.add({.name = "embedding", .shape = {I.V, I.D}});
  for (int64_t l = 0; l < I.L; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    I.mixer.push_back(mixer_kind(cfg_.model.mixer_of(l)).make(cfg_, mesh, layout));
    const std::vector<mixers::ParamSpec> ms = I.mixer.back()->param_specs();
    LayerParams lp;
    lp.mixer_norm = table_.add(p, std::vector{norm("attn_norm")});
    lp.mixer_first = table_.add(p, ms);
    lp.mixer_count = ms.size();
    lp.mlp_norm = table_.add(p, std::vector{norm("mlp_norm")});
    lp.w_gate_up = table_.add({.name = p + "w_gate_up", .shape = {2 * I.F, I.D}});
    lp.w_down = table_.add({.name = p + "w_down", .shape = {I.D, I.F}, .init = Init::normal_residual});
    I.lp.push_back(lp);
  }
  I.final_norm = table_.add(norm("final_norm"));
  I.head = cfg.model.tied_embeddings ? I.embedding : table_.add({.name = "head", .shape = {I.V, I.D}});
  table_.allocate(device_, DType::f32, dtype_);
  for (int64_t l = 0; l < I.L; ++l) I.mixer[l]->bind(table_.range(I.lp[l].mixer_first, I.lp[l].mixer_count));
}

Model::~Model() = default;

void Model::init(uint64_t seed) {
  table_.init({.seed = seed, .init_std = cfg_.model.init_std, .n_layers = cfg_.model.n_layers});
}

double Model::flops_per_token(int64_t seq_len) const {
  const Impl& I = *impl_;
  double mixer_params = 0, mixer_flops = 0;
  for (int64_t l = 0; l < I.L; ++l) {
    for (const Param& p : table_.range(I.lp[l].mixer_first, I.lp[l].mixer_count))
      mixer_params += static_cast<double>(p.master.numel());
    mixer_flops += I.mixer[l]->flops_per_token(seq_len);
  }
  const double rest = static_cast<double>(num_params() - I.V * I.D) - mixer_params;
  return 6.0 * rest + mixer_flops;
}

void Model::set_profile(StepProfile* profile) { impl_->profile = profile; }

void Model::sync_compute_weights() { table_.sync_compute(); }

void Model::begin_step(int64_t step) {
  for (auto& m : impl_->mixer) m->begin_step(step);
}

StepStats Model::forward_backward(const Batch& b, double loss_scale) {
  Impl& I = *impl_;
  std::vector<Param>& P = params();
  const auto [ids, tgt, seq] = I.forward_batch(P, b, Pass::train);
  // d(loss_scale * sum of scored losses): the op's gradient is scale / n_valid * sum.
  ops::CrossEntropyOptions ce;
  ce.ignore_index = -1;
  ce.loss_scale = static_cast<float>(loss_scale * static_cast<double>(b.scored));
  const Tensor tflat = tgt.view({I.B * I.S});
  ops::cross_entropy_forward_backward(I.losses, I.mean_loss, I.logits, I.logits, tflat, ce);

  Tensor none;
  const Param& head = P[I.head];
  Tensor dlnf_flat = I.dlnf.view({I.B * I.S, I.D});
  ops::linear_backward(dlnf_flat, P[I.head].grad, none, I.logits, I.lnf.view({I.B * I.S, I.D}), head.compute,
                       GradMode::overwrite);
  ops::rmsnorm_backward(I.dres, P[I.final_norm].grad, I.dlnf, I.x_final, P[I.final_norm].compute, I.rstdf,
                        GradMode::overwrite);
  I.enter(Phase::backward);
  for (int64_t l = I.L - 1; l >= 0; --l) {
    LayerActs& a = I.recompute(l) ? I.scratch : I.acts[l];
    if (I.recompute(l)) {
      I.scratch.x = I.acts[l].x;
      I.scratch.mixer = std::move(I.acts[l].mixer);
      Tensor no_output;  // the recompute pass stops before the layer output
      I.layer_forward(P, l, I.scratch, no_output, seq, Pass::recompute);
    }
    I.layer_backward(P, l, a, seq);
    a.mixer.reset();  // freed as the backward goes down the layers
  }
  ops::embedding_backward(P[I.embedding].grad, ids, I.dres,
                          cfg_.model.tied_embeddings ? GradMode::accumulate : GradMode::overwrite);
  return I.score(b.targets, b.scored);
}

Tensor Model::token_losses() const { return impl_->token_losses(); }

StepStats Model::evaluate(const Batch& b) {
  Impl& I = *impl_;
  const Tensor tgt = I.forward_batch(params(), b, Pass::checkpoint).tgt;
  for (LayerActs& a : I.acts) a.mixer.reset();
  ops::CrossEntropyOptions ce;
  ce.ignore_index = -1;
  ops::cross_entropy_forward(I.losses, I.mean_loss, I.logits, tgt.view({I.B * I.S}), ce);
  return I.score(b.targets, b.scored);
}

}  // namespace lctx::train
