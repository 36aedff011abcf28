#include "mixers/attention_core.h"

#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace lctx::mixers {

using ops::GradMode;

namespace {

void check_shape(const AttentionCoreOptions& o) {
  const HeadShape& s = o.shape;
  LCTX_CHECK(s.dim > 0 && s.heads > 0 && s.kv_heads > 0 && s.head_dim > 0 && s.heads % s.kv_heads == 0,
             "AttentionCore: need positive sizes and heads (", s.heads, ") divisible by kv_heads (", s.kv_heads, ")");
  LCTX_CHECK(o.position != Position::rope || s.head_dim % 2 == 0, "AttentionCore: RoPE needs an even head dim, got ",
             s.head_dim);
}

}  // namespace

AttentionCore::AttentionCore(const AttentionCoreOptions& o) : o_(o) {
  check_shape(o);
  LCTX_CHECK(o.short_conv == 0, "AttentionCore: a short conv (width ", o.short_conv,
             ") needs the sequence-parallel group and layout (the other constructor)");
}

AttentionCore::AttentionCore(const AttentionCoreOptions& o, dist::Comm& sp, const dist::Layout& layout) : o_(o) {
  check_shape(o);
  if (o.short_conv > 0) conv_.emplace(sp, layout, o.short_conv);
}

int64_t AttentionCore::qkv_channels() const {
  return (o_.shape.heads + 2 * o_.shape.kv_heads) * o_.shape.head_dim;
}

std::vector<ParamSpec> AttentionCore::param_specs() const {
  const HeadShape& s = o_.shape;
  std::vector<ParamSpec> p = {
      {.name = "wqkv", .shape = {qkv_channels(), s.dim}},
      {.name = "wo", .shape = {s.dim, s.heads * s.head_dim}, .init = Init::normal_residual},
  };
  if (o_.qk_norm == QkNorm::rms) {
    p.push_back({.name = "q_norm", .shape = {s.head_dim}, .decay = Decay::none, .init = Init::ones});
    p.push_back({.name = "k_norm", .shape = {s.head_dim}, .decay = Decay::none, .init = Init::ones});
  }
  if (conv_)
    for (ParamSpec& c : conv_->param_specs(qkv_channels())) p.push_back(std::move(c));
  return p;
}

void AttentionCore::bind(std::span<const Param> p) {
  LCTX_CHECK(p.size() == param_specs().size(), "AttentionCore::bind: ", p.size(), " parameters, expected ",
             param_specs().size());
  wqkv_ = p[0], wo_ = p[1];
  size_t i = 2;
  if (o_.qk_norm == QkNorm::rms) q_norm_ = p[i], k_norm_ = p[i + 1], i += 2;
  if (conv_) conv_w_ = p[i], conv_b_ = p[i + 1];
}

void AttentionCore::qkv_forward(QkvActs& a, const Tokens& in) const {
  const HeadShape& s = o_.shape;
  const Tensor& x = in.x;
  const int64_t B = x.size(0), L = x.size(1), H = s.heads, Hk = s.kv_heads, hd = s.head_dim;
  const DType dt = x.dtype();
  const Device dev = x.device();
  if (!a.qkv.defined()) a.qkv = Tensor::empty({B, L, qkv_channels()}, dt, dev);
  if (conv_) {
    a.qkv_in = Tensor::empty({B, L, qkv_channels()}, dt, dev);
    ops::linear_forward(a.qkv_in, x, wqkv_.compute, Tensor());
    a.conv_halo = conv_->halo(a.qkv_in);
    a.qkv.copy_from(conv_->forward(a.qkv_in, a.conv_halo, conv_w_, conv_b_));
  } else {
    ops::linear_forward(a.qkv, x, wqkv_.compute, Tensor());
  }
  const Tensor heads = a.qkv.view({B, L, H + 2 * Hk, hd});
  a.q = Tensor::empty({B, L, H, hd}, dt, dev);
  a.k = Tensor::empty({B, L, Hk, hd}, dt, dev);
  a.v = Tensor::empty({B, L, Hk, hd}, dt, dev);
  if (o_.qk_norm == QkNorm::rms) {
    const DType st = wide_dtype(dt);
    a.q_raw = heads.slice(2, 0, H).contiguous();
    a.k_raw = heads.slice(2, H, H + Hk).contiguous();
    a.q_rstd = Tensor::empty({B * L * H}, st, dev);
    a.k_rstd = Tensor::empty({B * L * Hk}, st, dev);
    const float eps = static_cast<float>(o_.norm_eps);
    ops::rmsnorm_forward(a.q, a.q_rstd, a.q_raw, q_norm_.compute, eps);
    ops::rmsnorm_forward(a.k, a.k_rstd, a.k_raw, k_norm_.compute, eps);
  } else {
    a.q.copy_from(heads.slice(2, 0, H));
    a.k.copy_from(heads.slice(2, H, H + Hk));
  }
  a.v.copy_from(heads.slice(2, H + Hk, H + 2 * Hk));
  if (o_.position == Position::rope) {
    ops::rope_forward(a.q, a.q, in.positions, o_.rope_theta);
    ops::rope_forward(a.k, a.k, in.positions, o_.rope_theta);
  }
}

void AttentionCore::qkv_backward(Tensor& dx, QkvActs& a, Tensor& dq, Tensor& dk, Tensor& dv, const Tokens& in) {
  const HeadShape& s = o_.shape;
  const int64_t H = s.heads, Hk = s.kv_heads;
  if (o_.position == Position::rope) {
    ops::rope_backward(dq, dq, in.positions, o_.rope_theta);
    ops::rope_backward(dk, dk, in.positions, o_.rope_theta);
  }
  // The backward reads qkv no more: d(qkv) is written over it.
  Tensor dheads = a.qkv.view({a.qkv.size(0), a.qkv.size(1), H + 2 * Hk, s.head_dim});
  Tensor dq_raw = dheads.slice(2, 0, H), dk_raw = dheads.slice(2, H, H + Hk);
  if (o_.qk_norm == QkNorm::rms) {
    Tensor gq = Tensor::empty(dq.shape(), dq.dtype(), dq.device());
    Tensor gk = Tensor::empty(dk.shape(), dk.dtype(), dk.device());
    ops::rmsnorm_backward(gq, q_norm_.grad, dq, a.q_raw, q_norm_.compute, a.q_rstd, GradMode::overwrite);
    ops::rmsnorm_backward(gk, k_norm_.grad, dk, a.k_raw, k_norm_.compute, a.k_rstd, GradMode::overwrite);
    dq_raw.copy_from(gq);
    dk_raw.copy_from(gk);
  } else {
    dq_raw.copy_from(dq);
    dk_raw.copy_from(dk);
  }
  dheads.slice(2, H + Hk, H + 2 * Hk).copy_from(dv);
  const Tensor d_proj = conv_ ? conv_->backward(a.qkv_in, a.conv_halo, a.qkv, conv_w_, conv_b_) : a.qkv;
  Tensor none;
  ops::linear_backward(dx, wqkv_.grad, none, d_proj, in.x, wqkv_.compute, GradMode::overwrite);
}

void AttentionCore::out_forward(Tensor& y, const Tensor& o) const {
  ops::linear_forward(y, o.view({o.size(0), o.size(1), o.size(2) * o.size(3)}), wo_.compute, Tensor());
}

void AttentionCore::out_backward(Tensor& d_o, const Tensor& dy, const Tensor& o) {
  Tensor none, flat = d_o.view({d_o.size(0), d_o.size(1), d_o.size(2) * d_o.size(3)});
  ops::linear_backward(flat, wo_.grad, none, dy, o.view({o.size(0), o.size(1), o.size(2) * o.size(3)}), wo_.compute,
                       GradMode::overwrite);
}

double AttentionCore::flops_per_token() const {
  double n = 0;
  for (const ParamSpec& p : param_specs()) n += static_cast<double>(shape_numel(p.shape));
  return 6.0 * n;
}

}  // namespace lctx::mixers
