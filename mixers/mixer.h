// Mixer: one kind of sequence-mixing layer (softmax attention, and next linear attention,
// Mamba, sparse and memory attention) behind the one interface the model's scaffold calls:
//   embed -> [x += mixer(norm(x)), x += mlp(norm(x))] x L -> norm -> head.
// A mixer maps the normalised residual stream x [B, L, D] of this rank's tokens (at the global
// positions of the dist::Layout; zigzag shards under sequence parallelism) to y [B, L, D]. It
// declares and owns its parameters, saves a typed struct of activations for its backward, and
// runs its own sequence-parallel algorithm over the mesh it was built with.
//
// Activation checkpointing: Pass::checkpoint keeps only what is costly to recompute (softmax:
// the attention output and its log-sum-exp); Pass::recompute, run just before the backward,
// rebuilds the rest from x and those. Both paths give bitwise the same y and gradients.
#pragma once
#include <memory>
#include <span>
#include <vector>

#include "attn/documents.h"
#include "core/tensor.h"
#include "mixers/param.h"

namespace lctx::mixers {

// This rank's tokens (in layout order): x [B, L, D], their positions, and with packed
// documents which document each one belongs to. A mixer keeps every token to its document.
struct Tokens {
  Tensor x;
  // RoPE positions: global, i32 [L], or per row, i32 [B, L] (packed documents whose positions
  // restart at each document start).
  Tensor positions;
  // Packed documents: the document of each token, i32 [B, L] (attn::Documents::ids sharded like
  // the tokens), or undefined (each row is one document).
  Tensor doc_ids;
  // Host description of those documents: every row's document starts in global positions.
  std::shared_ptr<const attn::Documents> documents;
};

enum class Pass {
  train,       // keep every activation the backward reads
  checkpoint,  // keep only what recompute cannot redo cheaply; also used for evaluation
  recompute,   // after Pass::checkpoint, before the backward: rebuild the rest
};

// What a forward leaves for its backward; each kind derives its own struct.
struct Saved {
  virtual ~Saved() = default;
};

class Mixer {
 public:
  virtual ~Mixer() = default;
  // The parameters this mixer needs, in the order bind() receives them.
  virtual std::vector<ParamSpec> param_specs() const = 0;
  virtual void bind(std::span<const Param> params) = 0;

  // y = mixer(x); y is owned by `saved` (valid until the backward, which may reuse its
  // memory). Pass::recompute takes the `saved` of a Pass::checkpoint forward.
  virtual Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) = 0;
  // dx (x's shape and dtype, overwritten) from dy; parameter gradients are overwritten.
  virtual void backward(Tensor& dx, const Tensor& dy, const Tokens& in, Saved& saved) = 0;

  // Training FLOPs (forward + backward) per token at this sequence length: the model's MFU.
  virtual double flops_per_token(int64_t seq_len) const = 0;

  // Called by the trainer before the forward of training step `step` (0-based; also before an
  // evaluation, with the steps done). A kind whose non-parameter state changes with training
  // (the Performer's random features, redrawn every K steps) derives it from the step here, so
  // that it is a function of the config and the step a checkpoint stores: resume is exact.
  virtual void begin_step(int64_t step) { (void)step; }
};

}  // namespace lctx::mixers
