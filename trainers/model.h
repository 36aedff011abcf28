// The decoder-only language model lctx-train trains: a scaffold written llm.c style (explicit
// forward and backward over lctx::ops layers, every activation the backward needs saved in a
// named buffer) around one mixer per layer:
//
//   tokens -> embedding -> N x [ x += mixer(rmsnorm(x))                        (pre-norm)
//                                x += Wdown swiglu(Wgateup rmsnorm(x)) ]
//          -> rmsnorm -> head (tied to the embedding or not) -> cross-entropy on scored targets
//
// Each layer's mixer kind comes from model.mixers through the registry (mixer_registry.h); the
// scaffold has no per-kind branch. A mixer runs its own sequence-parallel algorithm over the
// mesh, on the tokens this rank holds under the dist::Layout, with the batch's positions and,
// for packed documents (data.documents), its document ids and documents (mixers::Tokens). Layers listed in
// model.activation_checkpointing keep their input and what their mixer cannot cheaply redo,
// and recompute the rest in backward. Master weights, gradients and AdamW state are f32; on a
// GPU the forward/backward run in bf16 on a copy of the weights refreshed after every
// optimizer step.
//
// All parameters are replicated on every rank: their gradients are summed over the whole world
// (dp and sp) by the trainer, which sees them as one flat f32 buffer.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "mixers/param_table.h"
#include "trainers/config.h"
#include "trainers/data.h"
#include "trainers/step_profile.h"

namespace lctx::dist {
class Mesh;
class Layout;
}

namespace lctx::train {

using mixers::Param;

// Per-rank sums over its share of a batch; the trainer all-reduces them.
struct StepStats {
  double loss_sum = 0;  // sum of the per-token cross-entropy over scored targets
  double correct = 0;   // scored targets whose argmax prediction is right
  double scored = 0;    // scored targets
};

class Model {
 public:
  // mesh: this rank's dp/sp/ulysses/ring groups; layout: which tokens of every sequence this
  // rank holds (dist::Layout, zigzag). Both must outlive the model.
  Model(const Config& cfg, Device device, dist::Mesh& mesh, const dist::Layout& layout);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Every parameter as its layer declares it (mixers::ParamSpec): element i of parameter p is
  // Philox draw (seed, p's offset + i), identical on every rank and device.
  void init(uint64_t seed);

  std::vector<Param>& params() { return table_.params(); }
  Tensor& flat_params() { return table_.flat_params(); }  // f32 [n]
  Tensor& flat_grads() { return table_.flat_grads(); }    // f32 [n]
  int64_t num_params() const { return table_.numel(); }
  // Training FLOPs per token at this sequence length (6 per parameter outside the embedding,
  // plus what each layer's mixer reports): the numerator of MFU.
  double flops_per_token(int64_t seq_len) const;

  // Tells every mixer the training step that comes next (mixers::Mixer::begin_step).
  void begin_step(int64_t step);

  // Forward and backward on this rank's share of a batch. Gradients are overwritten with
  // d(loss_scale * sum of scored token losses)/d(params) for this rank's tokens; the trainer
  // passes loss_scale = 1 / (scored targets in the global batch) and sums over ranks.
  StepStats forward_backward(const Batch& b, double loss_scale);
  // Forward only (eval).
  StepStats evaluate(const Batch& b);
  // The cross-entropy of each of this rank's tokens in the last forward_backward or evaluate,
  // f32 [B, S_local] on the CPU, 0 where the target is not scored: losses per document.
  Tensor token_losses() const;
  // Refreshes the compute copy (bf16) from the master weights after they changed.
  void sync_compute_weights();
  // Marks the phases of forward_backward in `profile` (nullptr: none); it must outlive the model.
  void set_profile(StepProfile* profile);

  const Config& config() const { return cfg_; }
  Device device() const { return device_; }
  DType compute_dtype() const { return dtype_; }

 private:
  struct Impl;
  Config cfg_;
  Device device_;
  DType dtype_;
  mixers::ParamTable table_;
  std::unique_ptr<Impl> impl_;
};

// Compute dtype for a config on a device (model.dtype, auto: f32 on CPU, bf16 on GPU).
DType compute_dtype_for(const Config& cfg, Device device);

}  // namespace lctx::train
