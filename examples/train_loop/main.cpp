// A minimal training loop over lctx layers, on the CPU: a one-layer language model
//   ids -> embedding -> x;  x2 = x + attention(rmsnorm(x));  logits = linear(rmsnorm(x2))
// trained with cross-entropy and AdamW for 20 steps on a toy task: arithmetic sequences
// x[t] = (start + stride * t) mod 16 with stride 1, 2 or 3; the model predicts x[t + 1]
// (only attention, which sees the previous token, can tell the stride).
//
// What it shows:
//  - the llm.c style of lctx::ops: every layer is an explicit <op>_forward / <op>_backward
//    pair writing into caller-allocated tensors, activations saved by the caller, weight
//    gradients overwritten (GradMode) -- there is no autograd;
//  - a mixer (mixers::make_softmax_mixer: q/k/v projection, RoPE, causal flash attention,
//    output projection) declaring its parameters, which a mixers::ParamTable allocates
//    together with the model's own (ParamSpec: shape, initialisation, weight decay);
//  - mixers run over a dist::Mesh; in one process that is one simulated rank (run_simulated).
// Prints the loss of every step; exits 1 if the loss does not fall.
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/sim_comm.h"
#include "mixers/param_table.h"
#include "mixers/softmax.h"
#include "ops/adamw.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/residual.h"
#include "ops/rmsnorm.h"

using namespace lctx;

namespace {

constexpr int64_t kVocab = 16, kDim = 32, kHeads = 2, kHeadDim = 16;
constexpr int64_t kBatch = 8, kSeq = 32;
constexpr int kSteps = 20;

// i32 [B, S] token ids and next-token targets.
struct Batch {
  Tensor ids, targets;
};

Batch arithmetic_sequences(std::mt19937& gen) {
  std::uniform_int_distribution<int> start(0, kVocab - 1), stride(1, 3);
  std::vector<double> ids, targets;
  for (int64_t b = 0; b < kBatch; ++b) {
    const int s0 = start(gen), d = stride(gen);
    for (int64_t t = 0; t < kSeq; ++t) {
      ids.push_back(static_cast<double>((s0 + d * t) % kVocab));
      targets.push_back(static_cast<double>((s0 + d * (t + 1)) % kVocab));
    }
  }
  return {Tensor::from_vector({kBatch, kSeq}, ids, DType::i32),
          Tensor::from_vector({kBatch, kSeq}, targets, DType::i32)};
}

Tensor like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype()); }

int train(dist::Comm& comm) {
  // One rank: the mesh and layout the mixer runs over, and the tokens' positions (for RoPE).
  dist::Mesh mesh(comm, {});
  const dist::Layout layout(dist::LayoutKind::zigzag, kSeq, 1);
  const Tensor positions = layout.positions_tensor(0, DType::i32);

  mixers::SoftmaxOptions attention;
  attention.core.shape = {.dim = kDim, .heads = kHeads, .kv_heads = kHeads, .head_dim = kHeadDim};
  attention.core.position = mixers::Position::rope;
  std::unique_ptr<mixers::Mixer> mixer = mixers::make_softmax_mixer(attention, mesh, layout);

  // Every parameter in one table: f32 masters, gradients and (here the same) compute copies.
  using mixers::Decay, mixers::Init;
  mixers::ParamTable table;
  const size_t embed = table.add({"embed", {kVocab, kDim}, Decay::weight, Init::normal});
  const size_t norm1 = table.add({"norm1", {kDim}, Decay::none, Init::ones});
  const std::vector<mixers::ParamSpec> mixer_specs = mixer->param_specs();
  const size_t first_mixer = table.add("attention.", mixer_specs);
  const size_t norm2 = table.add({"norm2", {kDim}, Decay::none, Init::ones});
  const size_t head = table.add({"head", {kVocab, kDim}, Decay::weight, Init::normal});
  table.allocate(Device::cpu(), DType::f32, DType::f32);
  table.init({.seed = 1, .init_std = 0.02});
  mixer->bind(table.range(first_mixer, mixer_specs.size()));
  std::vector<mixers::Param>& p = table.params();

  // AdamW moments, one pair per parameter; weight decay on matrices only.
  std::vector<Tensor> m, v;
  for (const mixers::Param& q : p) {
    m.push_back(Tensor::zeros(q.master.shape(), DType::f32));
    v.push_back(Tensor::zeros(q.master.shape(), DType::f32));
  }

  std::mt19937 gen(7);
  std::vector<double> losses;
  for (int step = 1; step <= kSteps; ++step) {
    const Batch batch = arithmetic_sequences(gen);

    // ---- forward: each op writes into a tensor the caller allocates --------------------
    Tensor x = Tensor::empty({kBatch, kSeq, kDim}, DType::f32);
    ops::embedding_forward(x, batch.ids, p[embed].compute);
    Tensor h1 = like(x), rstd1 = Tensor::empty({kBatch * kSeq}, DType::f32);
    ops::rmsnorm_forward(h1, rstd1, x, p[norm1].compute);
    const mixers::Tokens tokens{h1, positions};
    std::unique_ptr<mixers::Saved> saved;  // what the mixer's backward needs
    const Tensor y = mixer->forward(tokens, saved, mixers::Pass::train);
    Tensor x2 = like(x);
    ops::residual_forward(x2, x, y);
    Tensor h2 = like(x), rstd2 = Tensor::empty({kBatch * kSeq}, DType::f32);
    ops::rmsnorm_forward(h2, rstd2, x2, p[norm2].compute);
    Tensor logits = Tensor::empty({kBatch, kSeq, kVocab}, DType::f32);
    ops::linear_forward(logits, h2, p[head].compute, Tensor{});

    // ---- loss and backward, in reverse order; weight gradients are overwritten ---------
    Tensor row_losses = Tensor::empty({kBatch * kSeq}, DType::f32), loss = Tensor::empty({1}, DType::f32);
    Tensor logits2d = logits.view({kBatch * kSeq, kVocab});
    ops::cross_entropy_forward_backward(row_losses, loss, logits2d, logits2d, batch.targets.view({-1}));
    Tensor& dlogits = logits;  // the fused cross-entropy wrote d(loss)/d(logits) over the logits
    Tensor dh2 = like(x), no_bias;
    ops::linear_backward(dh2, p[head].grad, no_bias, dlogits, h2, p[head].compute, GradMode::overwrite);
    Tensor dx2 = like(x);
    ops::rmsnorm_backward(dx2, p[norm2].grad, dh2, x2, p[norm2].compute, rstd2, GradMode::overwrite);
    Tensor dh1 = like(x);  // x2 = x + y: dx2 is the gradient of y and part of that of x
    mixer->backward(dh1, dx2, tokens, *saved);
    Tensor dx = like(x);
    ops::rmsnorm_backward(dx, p[norm1].grad, dh1, x, p[norm1].compute, rstd1, GradMode::overwrite);
    dx.add_from(dx2);
    ops::embedding_backward(p[embed].grad, batch.ids, dx, GradMode::overwrite);

    // ---- AdamW on the f32 masters (they are the compute copies here) ------------------
    for (size_t i = 0; i < p.size(); ++i) {
      ops::AdamWConfig cfg;
      cfg.lr = 1e-2f;
      cfg.weight_decay = p[i].decay == Decay::weight ? 0.01f : 0.0f;
      Tensor no_copy;  // no separate low-precision copy to refresh
      ops::adamw_update(no_copy, p[i].master, m[i], v[i], p[i].grad, cfg, step);
    }
    table.sync_compute();

    losses.push_back(loss.item());
    std::printf("step %2d  loss %.4f\n", step, losses.back());
  }
  const bool fell = losses.back() < 0.75 * losses.front();
  std::printf("loss %.4f -> %.4f: %s\n", losses.front(), losses.back(), fell ? "decreasing" : "NOT decreasing");
  return fell ? 0 : 1;
}

}  // namespace

int main() {
  int status = 1;
  try {
    dist::run_simulated(1, [&](dist::Comm& comm) { status = train(comm); });
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return status;
}
