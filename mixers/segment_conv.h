// Causal depthwise conv + SiLU over this rank's segments of [B, L, C] rows, each segment from
// the width - 1 rows before it wherever they live (dist/halo.h), so any layout and rank count
// gives the one-rank result. The Mamba kinds' conv in front of the scan, and the linear kinds'
// short conv over q, k, v (mixer.linear.short_conv, as fla's ShortConvolution). Its parameters
// are the layer's (param_specs: weight [C, width], bias [C], PyTorch's conv init).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "dist/layout.h"
#include "mixers/param.h"

namespace lctx::dist {
class Comm;
}  // namespace lctx::dist

namespace lctx::mixers {

class SegmentConv {
 public:
  // width in 2..ssm::kMaxConvWidth (the kinds' options check their own ranges first).
  SegmentConv(dist::Comm& sp, const dist::Layout& layout, int64_t width);

  // conv_weight [channels, width] and conv_bias [channels], U(-1/sqrt(width), 1/sqrt(width)).
  std::vector<ParamSpec> param_specs(int64_t channels) const;

  // Per local segment, the rows before it (collective over sp).
  std::vector<Tensor> halo(const Tensor& x) const;
  Tensor forward(const Tensor& x, std::span<const Tensor> halo, const Param& weight, const Param& bias) const;
  // dL/dx (x's dtype) from dL/du (x's dtype); overwrites the gradients of weight and bias.
  // Collective over sp (the history rows' gradients go back to their owners).
  Tensor backward(const Tensor& x, std::span<const Tensor> halo, const Tensor& du, const Param& weight,
                  const Param& bias) const;

  int64_t width() const { return width_; }

 private:
  dist::Comm& sp_;
  const dist::Layout& layout_;
  int64_t width_;
};

}  // namespace lctx::mixers
