#include "mixers/mamba2.h"

#include <cmath>

#include "core/rng.h"
#include "dist/mesh.h"
#include "mixers/mamba_parts.h"
#include "mixers/segment_conv.h"
#include "ops/rmsnorm.h"
#include "ops/swiglu.h"
#include "ssm/ssd.h"

namespace lctx::mixers {

namespace {

using namespace mamba;

// mamba_ssm's A_init_range: A uniform in [1, 16] per head, stored as A_log = log(A).
constexpr double kAMin = 1.0, kAMax = 16.0;

void init_a_log(Tensor& master, const InitContext& ctx) {
  rng_uniform(master, ctx.seed, ctx.offset, kAMin, kAMax);
  std::vector<double> v = master.to_vector();
  for (double& a : v) a = std::log(a);
  master.copy_from(Tensor::from_vector(master.shape(), v, master.dtype()));
}

class Mamba2Mixer final : public Mixer {
 public:
  Mamba2Mixer(const Mamba2Options& o, dist::Mesh& mesh, const dist::Layout& layout)
      : o_(o), di_(o.expand * o.dim), mesh_(mesh), layout_(layout), conv_(mesh.sp(), layout, o.d_conv) {
    LCTX_CHECK(o.dim >= 1 && o.expand >= 1 && o.d_state >= 1, "mamba2 mixer: dim (", o.dim, "), expand (", o.expand,
               ") and d_state (", o.d_state, ") must be >= 1");
    LCTX_CHECK(o.head_dim >= 1 && di_ % o.head_dim == 0, "mamba2 mixer: head_dim (", o.head_dim,
               ") must divide d_inner = expand x dim = ", di_);
    heads_ = di_ / o.head_dim;
    LCTX_CHECK(o.groups >= 1 && heads_ % o.groups == 0, "mamba2 mixer: groups (", o.groups,
               ") must divide the heads d_inner / head_dim = ", heads_);
    LCTX_CHECK(o.chunk >= 1, "mamba2 mixer: chunk must be >= 1, got ", o.chunk);
    gn_ = o.groups * o.d_state;
    ssd_opts_.chunk = o.chunk;
  }

  std::vector<ParamSpec> param_specs() const override {
    const std::vector<ParamSpec> conv = conv_.param_specs(di_ + 2 * gn_);
    return {
        {.name = "in_proj", .shape = {2 * di_ + 2 * gn_ + heads_, o_.dim}},
        conv[0],
        conv[1],
        {.name = "dt_bias", .shape = {heads_}, .decay = Decay::none, .init = Init::custom, .custom = init_dt_bias},
        {.name = "A_log", .shape = {heads_}, .decay = Decay::none, .init = Init::custom, .custom = init_a_log},
        {.name = "D", .shape = {heads_}, .decay = Decay::none, .init = Init::ones},
        {.name = "norm", .shape = {di_}, .decay = Decay::none, .init = Init::ones},
        {.name = "out_proj", .shape = {o_.dim, di_}, .init = Init::normal_residual},
    };
  }

  void bind(std::span<const Param> p) override {
    LCTX_CHECK(p.size() == param_specs().size(), "mamba2 mixer: bind got ", p.size(), " parameters, expected ",
               param_specs().size());
    in_proj_ = p[0], conv_w_ = p[1], conv_b_ = p[2], dt_bias_ = p[3], a_log_ = p[4], d_ = p[5], norm_ = p[6];
    out_proj_ = p[7];
  }

  Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) override {
    LCTX_CHECK(!in.doc_ids.defined(), "mamba2 mixer: packed documents (data.documents) are not supported: ",
               "the conv and the state would run across document starts");
    if (pass != Pass::recompute) saved = std::make_unique<Mamba2Saved>();
    auto& s = static_cast<Mamba2Saved&>(*saved);
    const int64_t batch = in.x.size(0), L = in.x.size(1);
    s.z = project(in.x, in_proj_, 0, di_);
    s.xbc = project(in.x, in_proj_, di_, di_ + 2 * gn_);
    s.dt = project(in.x, in_proj_, 2 * di_ + 2 * gn_, heads_);
    if (pass != Pass::recompute) s.halo = conv_.halo(s.xbc);
    const Tensor u = conv_.forward(s.xbc, s.halo, conv_w_, conv_b_);
    s.x = u.slice(2, 0, di_).contiguous().view({batch, L, heads_, o_.head_dim});
    s.B = u.slice(2, di_, di_ + gn_).contiguous().view({batch, L, o_.groups, o_.d_state});
    s.C = u.slice(2, di_ + gn_, di_ + 2 * gn_).contiguous().view({batch, L, o_.groups, o_.d_state});
    s.A = negative_exp(a_log_.compute);
    if (pass != Pass::recompute) {
      s.y = Tensor::empty(s.x.shape(), s.x.dtype(), s.x.device());
      s.scan = dist::recurrent_forward(mesh_.sp(), layout_, segment_kernel(s, nullptr));
    }
    s.zy = Tensor::empty({batch, L, 2 * di_}, in.x.dtype(), in.x.device());
    s.zy.slice(2, 0, di_).copy_from(s.z);
    s.zy.slice(2, di_, 2 * di_).copy_from(s.y.view({batch, L, di_}));
    s.g = Tensor::empty({batch, L, di_}, in.x.dtype(), in.x.device());
    ops::swiglu_forward(s.g, s.zy);
    s.normed = Tensor::empty(s.g.shape(), s.g.dtype(), s.g.device());
    s.rstd = Tensor::empty({batch * L * o_.groups}, wide_dtype(s.g.dtype()), s.g.device());
    ops::rmsnorm_forward(s.normed, s.rstd, s.g, norm_.compute, static_cast<float>(o_.norm_eps), o_.groups);
    s.out = project(s.normed, out_proj_, 0, o_.dim);
    Tensor out = s.out;
    if (pass == Pass::checkpoint)  // keep y, the halos and the scan
      s.z = s.xbc = s.dt = s.x = s.B = s.C = s.A = s.zy = s.g = s.rstd = s.normed = s.out = Tensor();
    return out;
  }

  void backward(Tensor& dx, const Tensor& dy, const Tokens& in, Saved& saved) override {
    auto& s = static_cast<Mamba2Saved&>(saved);
    const int64_t batch = in.x.size(0), L = in.x.size(1);
    const DType dt = in.x.dtype();  // of the activations; the accumulators are wide (f32 on GPUs)
    Tensor d_normed = wide_zeros_like(s.normed);
    project_backward(d_normed, out_proj_, 0, o_.dim, dy, s.normed);
    Tensor dg = Tensor::empty(s.g.shape(), s.g.dtype(), s.g.device()), d_norm = norm_.grad;
    ops::rmsnorm_backward(dg, d_norm, d_normed.to(dt), s.g, norm_.compute, s.rstd, GradMode::overwrite, o_.groups);
    Tensor dzy = Tensor::empty(s.zy.shape(), s.zy.dtype(), s.zy.device());
    ops::swiglu_backward(dzy, dg, s.zy);

    ScanGradSums g = zero_ssd_grads(s);
    g.dy = dzy.slice(2, di_, 2 * di_).contiguous().view(s.y.shape());
    dist::recurrent_backward(mesh_.sp(), layout_, segment_kernel(s, &g), s.scan);
    a_log_.grad.copy_from(a_log_grad(g.dA, s.A, a_log_.grad.dtype()));
    d_.grad.copy_from(g.dD);
    dt_bias_.grad.copy_from(g.d_dt_bias);

    Tensor du = Tensor::empty({batch, L, di_ + 2 * gn_}, s.xbc.dtype(), s.xbc.device());
    du.slice(2, 0, di_).copy_from(g.dx.view({batch, L, di_}));
    du.slice(2, di_, di_ + gn_).copy_from(g.dB.view({batch, L, gn_}));
    du.slice(2, di_ + gn_, di_ + 2 * gn_).copy_from(g.dC.view({batch, L, gn_}));
    const Tensor d_xbc = conv_.backward(s.xbc, s.halo, du, conv_w_, conv_b_);

    Tensor dxw = wide_zeros_like(in.x);
    project_backward(dxw, in_proj_, 0, di_, dzy.slice(2, 0, di_).contiguous(), in.x);
    project_backward(dxw, in_proj_, di_, di_ + 2 * gn_, d_xbc, in.x);
    project_backward(dxw, in_proj_, 2 * di_ + 2 * gn_, heads_, g.d_dt.to(dt), in.x);
    dx.copy_from(dxw);
  }

  double flops_per_token(int64_t seq_len) const override {
    const double D = static_cast<double>(o_.dim), Di = static_cast<double>(di_), GN = static_cast<double>(gn_);
    const double H = static_cast<double>(heads_), N = static_cast<double>(o_.d_state);
    const double P = static_cast<double>(o_.head_dim), W = static_cast<double>(o_.d_conv);
    const double chunk = static_cast<double>(std::min(o_.chunk, seq_len));
    const double matmul = 2.0 * (D * (2.0 * Di + 2.0 * GN + H) + Di * D);
    // Per head and token: the state update and read (2 N P each) and the chunk's quadratic part
    // (chunk (N + P)), as linear attention; the conv (2 W per channel), gate and norm (~8 per channel).
    const double pointwise = H * (4.0 * N * P + chunk * (N + P)) + 2.0 * W * (Di + 2.0 * GN) + 8.0 * Di;
    return 3.0 * (matmul + pointwise);
  }

 private:
  ScanGradSums zero_ssd_grads(const Mamba2Saved& s) const {
    return {wide_zeros_like(s.x), wide_zeros_like(s.dt), wide_zeros_like(s.B),
            wide_zeros_like(s.C), Tensor(),              wide_zeros_like(s.A),
            wide_zeros_like(d_.compute), wide_zeros_like(dt_bias_.compute), Tensor()};
  }

  // SSD on one segment; states [B, H, N, P] viewed as the scan's [B, H, N * P].
  dist::SegmentKernel segment_kernel(Mamba2Saved& s, ScanGradSums* g) const {
    const Shape state_shape = {s.x.size(0), heads_, o_.d_state, o_.head_dim};
    const auto inputs = [&s, state_shape, this](const dist::Segment& seg, const Tensor& state0) {
      ssm::SsdInputs in;
      in.x = rows(s.x, seg).contiguous();
      in.dt = rows(s.dt, seg).contiguous();
      in.A = s.A;
      in.B = rows(s.B, seg).contiguous();
      in.C = rows(s.C, seg).contiguous();
      in.D = wide(d_.compute);
      in.dt_bias = wide(dt_bias_.compute);
      if (state0.defined()) in.state0 = state0.view(state_shape);
      return in;
    };
    const auto flat = [](const Tensor& state) { return state.view({state.size(0), state.size(1), -1}); };
    dist::SegmentKernel k;
    k.forward = [&s, inputs, flat, this](const dist::Segment& seg, const Tensor& state0) {
      const ssm::SsdOutput r = ssm::ssd_forward(inputs(seg, state0), ssd_opts_);
      rows(s.y, seg).copy_from(r.y);
      return flat(r.final_state);
    };
    k.decay = [&s, this](const dist::Segment& seg) {
      return segment_decay(s.dt, wide(dt_bias_.compute), s.A, seg);
    };
    k.backward = [g, inputs, flat, state_shape, this](const dist::Segment& seg, const Tensor& state0,
                                                      const Tensor& d_final, bool outputs) {
      const ssm::SsdInputs in = inputs(seg, state0);
      const Tensor dout =
          outputs ? rows(g->dy, seg).contiguous() : Tensor::zeros(in.x.shape(), in.x.dtype(), in.x.device());
      const Tensor dfin = d_final.defined() ? d_final.view(state_shape) : Tensor();
      const ssm::SsdGrads r = ssm::ssd_backward(in, dout, dfin, ssd_opts_);
      g->add(r, seg);
      return flat(r.d_state0);
    };
    return k;
  }

  Mamba2Options o_;
  int64_t di_, heads_ = 0, gn_ = 0;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
  SegmentConv conv_;
  ssm::SsdOptions ssd_opts_;
  Param in_proj_, conv_w_, conv_b_, dt_bias_, a_log_, d_, norm_, out_proj_;
};

}  // namespace

std::unique_ptr<Mixer> make_mamba2_mixer(const Mamba2Options& o, dist::Mesh& mesh, const dist::Layout& layout) {
  return std::make_unique<Mamba2Mixer>(o, mesh, layout);
}

}  // namespace lctx::mixers
