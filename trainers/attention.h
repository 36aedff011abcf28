// The attention of one model layer, behind one interface so that every layer kind (flash on
// one rank; ring, ulysses and hybrid across the sequence-parallel group) plugs into the same
// forward/backward of the model. q, k, v are this rank's tokens [B, S_local, H, hd] at the
// global positions of the dist::Layout (zigzag shards under sequence parallelism); RoPE is
// already applied.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "trainers/config.h"

namespace lctx::dist {
class Mesh;
class Layout;
}

namespace lctx::train {

// What a forward leaves for its backward: the output and the log-sum-exp (global, for ring).
struct AttnSaved {
  Tensor o;    // [B, S_local, H, hd], compute dtype
  Tensor lse;  // f32 [B, H, S_local]
};

struct AttnGrads {
  Tensor dq, dk, dv;  // contiguous, q/k/v shapes
};

class Attention {
 public:
  virtual ~Attention() = default;
  virtual void forward(AttnSaved& out, const Tensor& q, const Tensor& k, const Tensor& v) = 0;
  virtual AttnGrads backward(const Tensor& dout, const AttnSaved& saved, const Tensor& q, const Tensor& k,
                             const Tensor& v) = 0;
  // ALiBi slopes f32 [H] on the compute device (undefined: none).
  void set_alibi(const Tensor& slopes) { alibi_ = slopes; }

 protected:
  Tensor alibi_;
};

// Causal attention of kind `kind` (flash, ring, ulysses, hybrid) over the mesh's sequence
// groups, for tokens sharded by `layout`; both must outlive the attention.
std::unique_ptr<Attention> make_attention(const Config& cfg, const std::string& kind, dist::Mesh& mesh,
                                          const dist::Layout& layout);

}  // namespace lctx::train
