#include "ops/gate_mix.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

template <class T>
void cpu_forward(T* o, const std::vector<const T*>& b, const T* z, int64_t rows, int64_t H, int64_t E) {
  const int64_t n = static_cast<int64_t>(b.size());
  std::vector<T> g(b.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t t = 0; t < n; ++t) g[static_cast<size_t>(t)] = sigmoid(z[(i * n + t) * H + h]);
      for (int64_t e = 0; e < E; ++e) {
        const int64_t k = (i * H + h) * E + e;
        T acc = 0;
        for (int64_t t = 0; t < n; ++t) acc += g[static_cast<size_t>(t)] * b[static_cast<size_t>(t)][k];
        o[k] = acc;
      }
    }
}

template <class T>
void cpu_backward(const std::vector<T*>& db, T* dz, const T* d_o, const std::vector<const T*>& b, const T* z,
                  int64_t rows, int64_t H, int64_t E) {
  const int64_t n = static_cast<int64_t>(b.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t gi = (i * n + t) * H + h;
        const T g = sigmoid(z[gi]);
        const T* bt = b[static_cast<size_t>(t)];
        T* dbt = db[static_cast<size_t>(t)];
        T dg = 0;
        for (int64_t e = 0; e < E; ++e) {
          const int64_t k = (i * H + h) * E + e;
          dbt[k] = g * d_o[k];
          dg += d_o[k] * bt[k];
        }
        dz[gi] = dg * g * (T(1) - g);
      }
}

// The tensors' data as T (scalar_t or const scalar_t).
template <class T>
std::vector<T*> pointers(std::span<const Tensor> ts) {
  std::vector<T*> p;
  for (const Tensor& t : ts) p.push_back(t.data<std::remove_const_t<T>>());
  return p;
}

std::string indexed(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

// The shared checks: at least one branch, every branch and every tensor in `like` contiguous
// with branch 0's shape [.., H, E] and dtype on its device; logits [.., n H] of that dtype.
void check_mix(const char* op, std::span<const Tensor> branches, const Tensor& logits,
               std::initializer_list<std::pair<const char*, const Tensor*>> like) {
  LCTX_CHECK(!branches.empty(), op, ": needs at least one branch");
  const Tensor& b0 = branches[0];
  detail::check_float_input(op, "branches[0]", b0);
  LCTX_CHECK(b0.dim() >= 2, op, ": branches[0] ", b0.str(), " must be [.., H, E] (heads, then their elements)");
  for (size_t t = 1; t < branches.size(); ++t) {
    check_same_device(op, {&b0, &branches[t]});
    check_like(op, indexed("branches", t).c_str(), branches[t], b0);
  }
  for (const auto& [name, t] : like) {
    check_same_device(op, {&b0, t});
    check_like(op, name, *t, b0);
  }
  const int64_t n = static_cast<int64_t>(branches.size());
  Shape want(b0.shape().begin(), b0.shape().end() - 1);
  want.back() *= n;
  LCTX_CHECK(logits.defined() && logits.shape() == want, op, ": logits ", logits.str(), " must be ", shape_str(want),
             ": one gate logit per row, branch and head of ", n, " branches ", b0.str(), " (branch-major rows)");
  check_same_device(op, {&b0, &logits});
  check_dtype(op, "logits", logits, b0.dtype());
  check_contiguous(op, "logits", logits);
}

}  // namespace

void gate_mix_forward(Tensor& o, std::span<const Tensor> branches, const Tensor& logits, Stream s) {
  constexpr const char* op = "gate_mix_forward";
  check_mix(op, branches, logits, {{"o", &o}});
  if (o.device().is_cuda()) return LCTX_OPS_CUDA(op, o, cuda::gate_mix_forward(o, branches, logits, s));
  const int64_t H = o.size(-2), E = o.size(-1), rows = logits.numel() / std::max<int64_t>(logits.size(-1), 1);
  LCTX_DISPATCH_CPU_FLOAT(o.dtype(), op, [&] {
    cpu_forward(o.data<scalar_t>(), pointers<const scalar_t>(branches), logits.data<scalar_t>(), rows, H, E);
  });
}

void gate_mix_backward(std::span<const Tensor> d_branches, Tensor& d_logits, const Tensor& d_o,
                       std::span<const Tensor> branches, const Tensor& logits, Stream s) {
  constexpr const char* op = "gate_mix_backward";
  check_mix(op, branches, logits, {{"d_o", &d_o}});
  check_same_device(op, {&logits, &d_logits});
  check_like(op, "d_logits", d_logits, logits);
  LCTX_CHECK(d_branches.size() == branches.size(), op, ": ", d_branches.size(), " branch gradients for ",
             branches.size(), " branches");
  for (size_t t = 0; t < d_branches.size(); ++t) {
    check_same_device(op, {&d_o, &d_branches[t]});
    check_like(op, indexed("d_branches", t).c_str(), d_branches[t], d_o);
  }
  if (d_o.device().is_cuda())
    return LCTX_OPS_CUDA(op, d_o, cuda::gate_mix_backward(d_branches, d_logits, d_o, branches, logits, s));
  const int64_t H = d_o.size(-2), E = d_o.size(-1), rows = logits.numel() / std::max<int64_t>(logits.size(-1), 1);
  LCTX_DISPATCH_CPU_FLOAT(d_o.dtype(), op, [&] {
    cpu_backward(pointers<scalar_t>(d_branches), d_logits.data<scalar_t>(), d_o.data<scalar_t>(),
                 pointers<const scalar_t>(branches), logits.data<scalar_t>(), rows, H, E);
  });
}

}  // namespace lctx::ops
