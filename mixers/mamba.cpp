#include "mixers/mamba.h"

#include <cmath>

#include "dist/mesh.h"
#include "mixers/mamba_parts.h"
#include "mixers/segment_conv.h"
#include "ssm/selective_scan.h"
#include "ssm/selective_scan_params.h"  // kMaxStateCpu

namespace lctx::mixers {

int64_t mamba_d_inner(const MambaOptions& o) { return o.expand * o.dim; }
int64_t mamba_dt_rank(const MambaOptions& o) { return o.dt_rank > 0 ? o.dt_rank : (o.dim + 15) / 16; }

namespace {

using namespace mamba;

// A_log[d, n] = log(n + 1): A = -(1..d_state) in every channel (S4D-real).
void init_a_log(Tensor& master) {
  const int64_t D = master.size(0), N = master.size(1);
  std::vector<double> v(static_cast<size_t>(D * N));
  for (int64_t i = 0; i < D * N; ++i) v[i] = std::log(static_cast<double>(i % N + 1));
  master.copy_from(Tensor::from_vector(master.shape(), v, master.dtype()));
}

class MambaMixer final : public Mixer {
 public:
  MambaMixer(const MambaOptions& o, dist::Mesh& mesh, const dist::Layout& layout)
      : o_(o), di_(mamba_d_inner(o)), rank_(mamba_dt_rank(o)), mesh_(mesh), layout_(layout), conv_(mesh.sp(), layout, o.d_conv) {
    LCTX_CHECK(o.dim >= 1 && o.expand >= 1, "mamba mixer: dim (", o.dim, ") and expand (", o.expand, ") must be >= 1");
    LCTX_CHECK(o.d_state >= 1 && o.d_state <= ssm::kMaxStateCpu, "mamba mixer: d_state must be in 1..",
               ssm::kMaxStateCpu, ", got ", o.d_state);
    LCTX_CHECK(o.chunk >= 1, "mamba mixer: chunk must be >= 1, got ", o.chunk);
    scan_opts_.chunk = o.chunk;
  }

  std::vector<ParamSpec> param_specs() const override {
    const int64_t N = o_.d_state;
    const std::vector<ParamSpec> conv = conv_.param_specs(di_);
    return {
        {.name = "in_proj", .shape = {2 * di_, o_.dim}},
        conv[0],
        conv[1],
        {.name = "x_proj", .shape = {rank_ + 2 * N, di_}},
        uniform_spec("dt_proj", {di_, rank_}, 1.0 / std::sqrt(static_cast<double>(rank_)), Decay::weight),
        {.name = "dt_bias", .shape = {di_}, .decay = Decay::none, .init = Init::custom, .custom = init_dt_bias},
        {.name = "A_log",
         .shape = {di_, N},
         .decay = Decay::none,
         .init = Init::custom,
         .custom = [](Tensor& m, const InitContext&) { init_a_log(m); }},
        {.name = "D", .shape = {di_}, .decay = Decay::none, .init = Init::ones},
        {.name = "out_proj", .shape = {o_.dim, di_}, .init = Init::normal_residual},
    };
  }

  void bind(std::span<const Param> p) override {
    LCTX_CHECK(p.size() == param_specs().size(), "mamba mixer: bind got ", p.size(), " parameters, expected ",
               param_specs().size());
    in_proj_ = p[0], conv_w_ = p[1], conv_b_ = p[2], x_proj_ = p[3], dt_proj_ = p[4], dt_bias_ = p[5];
    a_log_ = p[6], d_ = p[7], out_proj_ = p[8];
  }

  Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) override {
    LCTX_CHECK(!in.doc_ids.defined(), "mamba mixer: packed documents (data.documents) are not supported: ",
               "the conv and the state would run across document starts");
    if (pass != Pass::recompute) saved = std::make_unique<MambaSaved>();
    auto& s = static_cast<MambaSaved&>(*saved);
    s.x_in = project(in.x, in_proj_, 0, di_);
    s.z = project(in.x, in_proj_, di_, di_);
    if (pass != Pass::recompute) s.halo = conv_.halo(s.x_in);
    s.u = conv_.forward(s.x_in, s.halo, conv_w_, conv_b_);
    s.dt_low = project(s.u, x_proj_, 0, rank_);
    s.B = project(s.u, x_proj_, rank_, o_.d_state);
    s.C = project(s.u, x_proj_, rank_ + o_.d_state, o_.d_state);
    s.dt = project(s.dt_low, dt_proj_, 0, di_);
    s.A = negative_exp(a_log_.compute);
    if (pass != Pass::recompute) {
      s.y = Tensor::empty(s.u.shape(), s.u.dtype(), s.u.device());
      s.scan = dist::recurrent_forward(mesh_.sp(), layout_, segment_kernel(s, nullptr));
    }
    s.out = project(s.y, out_proj_, 0, o_.dim);
    Tensor out = s.out;
    if (pass == Pass::checkpoint)  // keep y, the halos and the scan
      s.x_in = s.z = s.u = s.dt_low = s.B = s.C = s.dt = s.A = s.out = Tensor();
    return out;
  }

  void backward(Tensor& dx, const Tensor& dy, const Tokens& in, Saved& saved) override {
    auto& s = static_cast<MambaSaved&>(saved);
    const DType dt = in.x.dtype();  // of the activations; the accumulators are wide (f32 on GPUs)
    ScanGradSums g = zero_scan_grads(s);
    Tensor dyw = wide_zeros_like(s.y);
    project_backward(dyw, out_proj_, 0, o_.dim, dy, s.y);
    g.dy = dyw.to(dt);
    dist::recurrent_backward(mesh_.sp(), layout_, segment_kernel(s, &g), s.scan);
    a_log_.grad.copy_from(a_log_grad(g.dA, s.A, a_log_.grad.dtype()));
    d_.grad.copy_from(g.dD);
    dt_bias_.grad.copy_from(g.d_dt_bias);

    Tensor d_dt_low = wide_zeros_like(s.dt_low);
    project_backward(d_dt_low, dt_proj_, 0, di_, g.d_dt.to(dt), s.dt_low);
    project_backward(g.dx, x_proj_, 0, rank_, d_dt_low.to(dt), s.u);
    project_backward(g.dx, x_proj_, rank_, o_.d_state, g.dB.to(dt), s.u);
    project_backward(g.dx, x_proj_, rank_ + o_.d_state, o_.d_state, g.dC.to(dt), s.u);

    const Tensor d_x_in = conv_.backward(s.x_in, s.halo, g.dx.to(dt), conv_w_, conv_b_);
    Tensor dxw = wide_zeros_like(in.x);
    project_backward(dxw, in_proj_, 0, di_, d_x_in, in.x);
    project_backward(dxw, in_proj_, di_, di_, g.dz.to(dt), in.x);
    dx.copy_from(dxw);
  }

  double flops_per_token(int64_t seq_len) const override {
    (void)seq_len;  // linear in the sequence: the same cost per token at any length
    const double D = static_cast<double>(o_.dim), Di = static_cast<double>(di_), N = static_cast<double>(o_.d_state);
    const double R = static_cast<double>(rank_), W = static_cast<double>(o_.d_conv);
    const double matmul = 2.0 * (D * 2.0 * Di + Di * (R + 2.0 * N) + R * Di + Di * D);
    // Per channel: the conv (2 W), per state the decay, update and read (~7), the gate and skip (~6).
    const double pointwise = Di * (2.0 * W + 7.0 * N + 6.0);
    return 3.0 * (matmul + pointwise);
  }

 private:
  ScanGradSums zero_scan_grads(const MambaSaved& s) const {
    return {wide_zeros_like(s.u), wide_zeros_like(s.dt), wide_zeros_like(s.B),
            wide_zeros_like(s.C), wide_zeros_like(s.z),  wide_zeros_like(s.A),
            wide_zeros_like(d_.compute), wide_zeros_like(dt_bias_.compute), Tensor()};
  }

  // The scan on one segment; states [B, d_inner, d_state] viewed as the scan's [B, d_inner * d_state, 1].
  dist::SegmentKernel segment_kernel(MambaSaved& s, ScanGradSums* g) const {
    const int64_t batch = s.u.size(0), N = o_.d_state;
    const auto inputs = [&s, batch, N, this](const dist::Segment& seg, const Tensor& state0) {
      const int64_t T = seg.length;
      ssm::ScanInputs in;
      in.x = rows(s.u, seg).contiguous();
      in.dt = rows(s.dt, seg).contiguous();
      in.A = s.A;
      in.B = rows(s.B, seg).contiguous().view({batch, T, 1, N});
      in.C = rows(s.C, seg).contiguous().view({batch, T, 1, N});
      in.D = wide(d_.compute);
      in.z = rows(s.z, seg).contiguous();
      in.dt_bias = wide(dt_bias_.compute);
      if (state0.defined()) in.state0 = state0.view({batch, di_, N});
      return in;
    };
    const auto flat = [batch](const Tensor& state) { return state.view({batch, state.size(1) * state.size(2), 1}); };
    dist::SegmentKernel k;
    k.forward = [&s, inputs, flat, this](const dist::Segment& seg, const Tensor& state0) {
      const ssm::ScanOutput r = ssm::selective_scan_forward(inputs(seg, state0), scan_opts_);
      rows(s.y, seg).copy_from(r.y);
      return flat(r.final_state);
    };
    k.decay = [&s, this](const dist::Segment& seg) {
      return segment_decay(s.dt, wide(dt_bias_.compute), s.A, seg);
    };
    k.backward = [g, inputs, flat, batch, N, this](const dist::Segment& seg, const Tensor& state0, const Tensor& d_final,
                                                    bool outputs) {
      const ssm::ScanInputs in = inputs(seg, state0);
      const Tensor dout =
          outputs ? rows(g->dy, seg).contiguous() : Tensor::zeros(in.x.shape(), in.x.dtype(), in.x.device());
      const Tensor dfin = d_final.defined() ? d_final.view({batch, di_, N}) : Tensor();
      const ssm::ScanGrads r = ssm::selective_scan_backward(in, dout, dfin, scan_opts_);
      g->add(r, seg);
      return flat(r.d_state0);
    };
    return k;
  }

  MambaOptions o_;
  int64_t di_, rank_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
  SegmentConv conv_;
  ssm::ScanOptions scan_opts_;
  Param in_proj_, conv_w_, conv_b_, x_proj_, dt_proj_, dt_bias_, a_log_, d_, out_proj_;
};

}  // namespace

std::unique_ptr<Mixer> make_mamba_mixer(const MambaOptions& o, dist::Mesh& mesh, const dist::Layout& layout) {
  return std::make_unique<MambaMixer>(o, mesh, layout);
}

}  // namespace lctx::mixers
