#include "dist/ring_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lctx::dist {

namespace {

void check_merge(const Tensor& o_acc, const Tensor& lse_acc, const Tensor& o_blk, const Tensor& lse_blk) {
  const char* op = "merge_attention";
  LCTX_CHECK(o_acc.dim() == 4, op, ": o_acc ", o_acc.str(), " must be [B, n, H, D]");
  check_shape(op, "o_blk", o_blk, o_acc.shape());
  check_shape(op, "lse_acc", lse_acc, {o_acc.size(0), o_acc.size(2), o_acc.size(1)});
  check_shape(op, "lse_blk", lse_blk, lse_acc.shape());
  for (const Tensor* t : {&o_acc, &lse_acc, &o_blk, &lse_blk}) {
    LCTX_CHECK(t->dtype() == o_acc.dtype() && (t->dtype() == DType::f32 || t->dtype() == DType::f64), op, ": ",
               t->str(), " must be f32 or f64 like o_acc ", o_acc.str());
    LCTX_CHECK(t->strides().back() == 1 || t->size(-1) <= 1, op, ": ", t->str(), " needs a contiguous last dim");
  }
  check_same_device(op, {&o_acc, &lse_acc, &o_blk, &lse_blk});
}

template <class T>
void merge_cpu(const Tensor& oa, const Tensor& la, const Tensor& ob, const Tensor& lb) {
  const int64_t B = oa.size(0), n = oa.size(1), H = oa.size(2), D = oa.size(3);
  T* po = oa.data<T>();
  T* pl = la.data<T>();
  const T* qo = ob.data<T>();
  const T* ql = lb.data<T>();
  const auto& so = oa.strides();
  const auto& sb = ob.strides();
  const auto& sl = la.strides();
  const auto& sm = lb.strides();
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
#pragma omp parallel for collapse(2) schedule(static) if (B * n * H * D > 65536)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < n; ++i) {
        T& l1 = pl[b * sl[0] + h * sl[1] + i];
        const T l2 = ql[b * sm[0] + h * sm[1] + i];
        const T m = std::max(l1, l2);
        if (m == kNegInf) continue;  // nothing visible on either side
        const T w1 = std::exp(l1 - m), w2 = std::exp(l2 - m), sum = w1 + w2;
        T* o1 = po + b * so[0] + i * so[1] + h * so[2];
        const T* o2 = qo + b * sb[0] + i * sb[1] + h * sb[2];
        for (int64_t d = 0; d < D; ++d) o1[d] = (w1 * o1[d] + w2 * o2[d]) / sum;
        l1 = m + std::log(sum);
      }
}

}  // namespace

void merge_attention(const Tensor& o_acc, const Tensor& lse_acc, const Tensor& o_blk, const Tensor& lse_blk, Stream s) {
  check_merge(o_acc, lse_acc, o_blk, lse_blk);
  if (o_acc.numel() == 0) return;
  if (o_acc.device().is_cpu()) {
    if (o_acc.dtype() == DType::f64) merge_cpu<double>(o_acc, lse_acc, o_blk, lse_blk);
    else merge_cpu<float>(o_acc, lse_acc, o_blk, lse_blk);
    return;
  }
#ifdef LCTX_HAVE_CUDA
  detail::merge_attention_cuda(o_acc, lse_acc, o_blk, lse_blk, s);
#else
  (void)s;
#endif
}

}  // namespace lctx::dist
