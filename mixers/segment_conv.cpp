#include "mixers/segment_conv.h"

#include <cmath>

#include "dist/halo.h"
#include "ssm/causal_conv1d.h"

namespace lctx::mixers {

namespace {

ssm::ConvInputs conv_inputs(const Tensor& x, const Tensor& halo, const Param& weight, const Param& bias,
                            const dist::Segment& seg) {
  return {.x = rows(x, seg).contiguous(), .weight = wide(weight.compute), .bias = wide(bias.compute), .history = halo};
}

const ssm::ConvOptions kSilu{.activation = ssm::Activation::silu};

}  // namespace

SegmentConv::SegmentConv(dist::Comm& sp, const dist::Layout& layout, int64_t width)
    : sp_(sp), layout_(layout), width_(width) {
  LCTX_CHECK(width >= 2 && width <= ssm::kMaxConvWidth, "SegmentConv: width must be in 2..", ssm::kMaxConvWidth,
             ", got ", width);
}

std::vector<ParamSpec> SegmentConv::param_specs(int64_t channels) const {
  const double bound = 1.0 / std::sqrt(static_cast<double>(width_));
  return {uniform_spec("conv_weight", {channels, width_}, bound, Decay::weight),
          uniform_spec("conv_bias", {channels}, bound, Decay::none)};
}

std::vector<Tensor> SegmentConv::halo(const Tensor& x) const { return dist::halo_forward(sp_, layout_, x, width_ - 1); }

Tensor SegmentConv::forward(const Tensor& x, std::span<const Tensor> halo, const Param& weight, const Param& bias) const {
  Tensor u = Tensor::empty(x.shape(), x.dtype(), x.device());
  const std::vector<dist::Segment> segs = layout_.segments(sp_.rank());
  for (size_t i = 0; i < segs.size(); ++i)
    rows(u, segs[i]).copy_from(ssm::causal_conv1d_forward(conv_inputs(x, halo[i], weight, bias, segs[i]), kSilu));
  return u;
}

Tensor SegmentConv::backward(const Tensor& x, std::span<const Tensor> halo, const Tensor& du, const Param& weight,
                             const Param& bias) const {
  Tensor dx = Tensor::zeros(x.shape(), wide_dtype(x.dtype()), x.device());
  Tensor dw = weight.grad, db = bias.grad;
  dw.zero();
  db.zero();
  const std::vector<dist::Segment> segs = layout_.segments(sp_.rank());
  std::vector<Tensor> d_halo;
  for (size_t i = 0; i < segs.size(); ++i) {
    const ssm::ConvGrads g = ssm::causal_conv1d_backward(conv_inputs(x, halo[i], weight, bias, segs[i]),
                                                         rows(du, segs[i]).contiguous(), kSilu);
    rows(dx, segs[i]).add_from(g.dx);
    dw.add_from(g.dweight);
    db.add_from(g.dbias);
    d_halo.push_back(wide(g.d_history));  // halo_backward takes dx's wide dtype (bf16 on CUDA)
  }
  dist::halo_backward(sp_, layout_, d_halo, dx);
  return dx.to(x.dtype());
}

}  // namespace lctx::mixers
