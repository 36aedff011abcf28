#include "mixers/attention_parts.h"

#include <vector>

namespace lctx::mixers {

Tensor cast(const Tensor& t, DType dt) { return t.dtype() == dt ? t : t.to(dt); }

Tensor repeat_batch(const Tensor& t, int64_t B) {
  Shape shape = t.shape();
  LCTX_CHECK(!shape.empty() && shape[0] == 1, "repeat_batch: ", t.str(), " must be [1, ...]");
  shape[0] = B;
  Tensor out = Tensor::empty(shape, t.dtype(), t.device());
  for (int64_t b = 0; b < B; ++b) out.slice(0, b, b + 1).copy_from(t);
  return out;
}

Tensor sum_batch(const Tensor& t) {
  Shape shape = t.shape();
  shape[0] = 1;
  Tensor out = Tensor::zeros(shape, t.dtype(), t.device());
  for (int64_t b = 0; b < t.size(0); ++b) out.add_from(t.slice(0, b, b + 1));
  return out;
}

Tokens at_position_zero(const Tensor& x) {
  LCTX_CHECK(x.dim() == 2 || x.dim() == 3, "at_position_zero: ", x.str(), " must be [n, D] or [B, n, D]");
  Tokens t;
  t.x = x.dim() == 3 ? x : x.view({1, x.size(0), x.size(1)});
  t.positions = Tensor::zeros({t.x.size(1)}, DType::i32, x.device());
  return t;
}

void adding_grads(std::span<Param> params, const std::function<void()>& f) {
  std::vector<Tensor> before;
  before.reserve(params.size());
  for (Param& p : params) {
    before.push_back(p.grad.clone());
    p.grad.zero();
  }
  f();
  for (size_t i = 0; i < before.size(); ++i) params[i].grad.add_from(before[i]);
}

void learned_kv_backward(AttentionCore& core, std::span<Param> core_params, QkvActs& acts, const Tensor& dk,
                         const Tensor& dv, const Param& tokens) {
  const DType dt = acts.q.dtype();
  const Device dev = acts.q.device();
  const int64_t n = tokens.compute.size(0), D = tokens.compute.size(1);
  Tensor dq = Tensor::zeros(acts.q.shape(), dt, dev);  // used as keys only
  Tensor dk1 = sum_batch(dk).to(dt), dv1 = sum_batch(dv).to(dt);
  Tensor de = Tensor::empty({1, n, D}, dt, dev);
  adding_grads(core_params, [&] { core.qkv_backward(de, acts, dq, dk1, dv1, at_position_zero(tokens.compute)); });
  tokens.grad.view({1, n, D}).copy_from(de);
}

}  // namespace lctx::mixers
