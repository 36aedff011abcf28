#include "attn/flash_few_keys.h"

#include <algorithm>
#include <limits>

namespace lctx::attn {

void flash_backward_few_keys(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                    const Tensor& lse, const Tensor& dout, const FlashOptions& opts,
                                    const FlashGrads& into, Stream s) {
  const char* op = "flash_backward_few_keys";
  LCTX_CHECK(opts.mask == Mask::none && opts.window_left < 0 && opts.window_right < 0 && !opts.alibi_slopes.defined() &&
                 !opts.q_doc_ids.defined() && !opts.block_mask && opts.q_offset == 0 && opts.k_offset == 0,
             op, ": every pair must be visible (no mask, window, ALiBi, documents, block mask or offsets)");
  const DType wide = wide_dtype(q.dtype());
  LCTX_CHECK(into.dq.dtype() == wide && into.dk.dtype() == wide && into.dv.dtype() == wide, op,
             ": the gradients must be ", dtype_name(wide), " (they are added to)");
  const int64_t B = q.size(0), Sq = q.size(1), H = q.size(2), D = q.size(3), Sk = k.size(1), Hkv = k.size(2);
  constexpr int64_t kBlocks = 256, kRows = 64;  // ~2 blocks per SM; the kernels' query tile
  const int64_t want = std::clamp((kBlocks + B * Hkv - 1) / (B * Hkv), int64_t{1}, (Sq + kRows - 1) / kRows);
  const int64_t L = ((Sq + want - 1) / want + kRows - 1) / kRows * kRows, n = (Sq + L - 1) / L;
  if (n == 1) {
    flash_backward(q, k, v, o, lse, dout, opts, GradMode::accumulate, into, s);
    return;
  }
  const Device dev = q.device();
  const auto rows = [](const Tensor& t, int64_t a, int64_t b) { return t.slice(1, a, b); };
  const auto fold = [&](const Tensor& t) {  // [B n, L, ., .], zero rows at the end
    Tensor z = Tensor::empty({B, n * L, t.size(2), t.size(3)}, t.dtype(), dev);
    rows(z, 0, Sq).copy_from(t, s);
    if (n * L > Sq) rows(z, Sq, n * L).zero(s);
    return z.view({B * n, L, t.size(2), t.size(3)});
  };
  const Tensor qf = fold(q), of = fold(o), dof = fold(dout);
  // Padded rows: lse +inf, so P = 0 on every backend (cuDNN computes exp(s - lse) as is).
  Tensor lf = Tensor::full({B * n, H, L}, std::numeric_limits<double>::infinity(), lse.dtype(), dev, s);
  Tensor kf = Tensor::empty({B * n, Sk, Hkv, D}, k.dtype(), dev), vf = Tensor::empty(kf.shape(), v.dtype(), dev);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < n; ++c) {
      const int64_t i = b * n + c, a = c * L, e = std::min(a + L, Sq);
      lf.slice(0, i, i + 1).slice(2, 0, e - a).copy_from(lse.slice(0, b, b + 1).slice(2, a, e), s);
      kf.slice(0, i, i + 1).copy_from(k.slice(0, b, b + 1), s);
      vf.slice(0, i, i + 1).copy_from(v.slice(0, b, b + 1), s);
    }
  // The folded gradients in the input dtype (what cuDNN writes: no fp32 copies of the queries'
  // rows), each added once into the wide `into`.
  FlashGrads f{Tensor::empty(qf.shape(), q.dtype(), dev), Tensor::empty(kf.shape(), q.dtype(), dev),
               Tensor::empty(kf.shape(), q.dtype(), dev)};
  flash_backward(qf, kf, vf, of, lf, dof, opts, GradMode::overwrite, f, s);
  Tensor dq = into.dq;  // handles on the caller's storage
  dq.add_from(rows(f.dq.view({B, n * L, H, D}), 0, Sq), s);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < n; ++c) {
      into.dk.slice(0, b, b + 1).add_from(f.dk.slice(0, b * n + c, b * n + c + 1), s);
      into.dv.slice(0, b, b + 1).add_from(f.dv.slice(0, b * n + c, b * n + c + 1), s);
    }
}

}  // namespace lctx::attn
