#include "mixers/param_table.h"

#include <cmath>

#include "core/rng.h"

namespace lctx::mixers {

void init_param(Tensor& master, const ParamSpec& spec, const InitContext& ctx) {
  switch (spec.init) {
    case Init::ones: master.fill(1.0); return;
    case Init::zeros: master.fill(0.0); return;
    case Init::normal: rng_normal(master, ctx.seed, ctx.offset, 0.0, ctx.init_std); return;
    case Init::normal_residual:
      rng_normal(master, ctx.seed, ctx.offset, 0.0, ctx.init_std / std::sqrt(2.0 * static_cast<double>(ctx.n_layers)));
      return;
    case Init::custom:
      LCTX_CHECK(spec.custom, "parameter ", spec.name, ": Init::custom without a custom initialiser");
      spec.custom(master, ctx);
      return;
  }
}

ParamSpec uniform_spec(std::string name, Shape shape, double bound, Decay decay) {
  return {.name = std::move(name),
          .shape = std::move(shape),
          .decay = decay,
          .init = Init::custom,
          .custom = [bound](Tensor& m, const InitContext& c) { rng_uniform(m, c.seed, c.offset, -bound, bound); }};
}

Tensor wide(const Tensor& t) { return t.defined() ? t.to(wide_dtype(t.dtype())) : Tensor(); }

size_t ParamTable::add(const std::string& prefix, std::span<const ParamSpec> specs) {
  LCTX_CHECK(!flat_params_.defined(), "ParamTable::add after allocate()");
  const size_t first = specs_.size();
  for (ParamSpec s : specs) {
    s.name = prefix + s.name;
    specs_.push_back(std::move(s));
  }
  return first;
}

void ParamTable::allocate(Device device, DType master, DType compute) {
  int64_t total = 0;
  for (const auto& s : specs_) total += shape_numel(s.shape);
  flat_params_ = Tensor::zeros({total}, master, device);
  flat_grads_ = Tensor::zeros({total}, master, device);
  params_.clear();
  int64_t off = 0;
  for (const auto& s : specs_) {
    const int64_t n = shape_numel(s.shape);
    Param p;
    p.name = s.name;
    p.master = flat_params_.slice(0, off, off + n).view(s.shape);
    p.grad = flat_grads_.slice(0, off, off + n).view(s.shape);
    p.compute = compute == master ? p.master : Tensor::empty(s.shape, compute, device);
    p.decay = s.decay;
    params_.push_back(std::move(p));
    off += n;
  }
}

void ParamTable::init(const InitContext& ctx) {
  for (size_t i = 0; i < params_.size(); ++i) {
    InitContext c = ctx;
    c.offset = static_cast<uint64_t>(i) << 40;
    init_param(params_[i].master, specs_[i], c);
  }
  sync_compute();
  flat_grads_.zero();
}

void ParamTable::sync_compute() {
  for (auto& p : params_)
    if (p.compute.raw() != p.master.raw()) p.compute.copy_from(p.master);
}

}  // namespace lctx::mixers
