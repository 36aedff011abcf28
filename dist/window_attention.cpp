#include "dist/window_attention.h"

#include <algorithm>
#include <vector>

#include "dist/halo.h"
#include "dist/ring_kernels.h"

namespace lctx::dist {

namespace {

// The ring level of a layout (Ulysses ranks share their ring rank's tokens).
Layout ring_level(const Layout& layout) { return Layout(layout.kind(), layout.seq_len(), layout.ring_size(), 1); }

Tensor rows(const Tensor& t, int64_t a, int64_t b) { return t.slice(1, a, b); }

// The halo call of a segment starting at global position g: its first h queries against the
// halo rows [a, W) (positions g - W + a .. g - 1; rows before position 0 are left out).
struct HaloPart {
  int64_t h = 0, a = 0;
  attn::FlashOptions opts;
};

HaloPart halo_part(const attn::FlashOptions& opts, const Segment& seg) {
  const int64_t W = opts.window_left;
  HaloPart p;
  p.h = seg.global_begin > 0 ? std::min(W, seg.length) : 0;
  p.a = std::max<int64_t>(0, W - seg.global_begin);
  p.opts = opts;
  p.opts.q_offset = seg.global_begin;
  p.opts.k_offset = seg.global_begin - W + p.a;
  p.opts.out_dtype = attn::OutputDType::f32;
  return p;
}

// The segment alone: window and causality are relative, so offsets 0 (cuDNN can run it).
attn::FlashOptions local_options(const attn::FlashOptions& opts) {
  attn::FlashOptions lo = opts;
  lo.q_offset = lo.k_offset = 0;
  return lo;
}

}  // namespace

bool window_by_halo(const Layout& layout, const attn::FlashOptions& opts) {
  if (layout.ring_size() < 2 || opts.mask != attn::Mask::causal || opts.window_left < 0 || opts.k_doc_ids.defined() ||
      opts.documents)
    return false;
  const Layout rl = ring_level(layout);
  for (const Segment& seg : rl.segments(0))
    if (opts.window_left > seg.length) return false;
  return true;
}

attn::FlashOutput window_attention_forward(Comm& ring, const Layout& layout, const Tensor& q, const Tensor& k,
                                           const Tensor& v, const attn::FlashOptions& opts, Stream s) {
  const Layout rl = ring_level(layout);
  const auto segs = rl.segments(ring.rank());
  const int64_t W = opts.window_left;
  std::vector<Tensor> hk, hv;
  if (W > 0) hk = halo_forward(ring, rl, k, W, s), hv = halo_forward(ring, rl, v, W, s);
  const DType wd = wide_dtype(q.dtype());
  const attn::FlashOptions lo = local_options(opts);
  attn::FlashOutput out;
  if (segs.size() > 1) {
    out.o = Tensor::empty(q.shape(), opts.out_dtype == attn::OutputDType::f32 ? wd : q.dtype(), q.device());
    out.lse = Tensor::empty({q.size(0), q.size(2), q.size(1)}, wd, q.device());
  }
  for (size_t i = 0; i < segs.size(); ++i) {
    const int64_t lb = segs[i].local_begin, le = lb + segs[i].length;
    attn::FlashOutput part = attn::flash_forward(rows(q, lb, le), rows(k, lb, le), rows(v, lb, le), lo, s);
    if (segs.size() == 1) {
      out = part;
    } else {
      rows(out.o, lb, le).copy_from(part.o, s);
      out.lse.slice(2, lb, le).copy_from(part.lse, s);
    }
    const HaloPart hp = halo_part(opts, segs[i]);
    if (hp.h == 0) continue;
    const attn::FlashOutput far =
        attn::flash_forward(rows(q, lb, lb + hp.h), rows(hk[i], hp.a, W), rows(hv[i], hp.a, W), hp.opts, s);
    Tensor o_rows = rows(out.o, lb, lb + hp.h);
    const Tensor acc = o_rows.dtype() == wd ? o_rows : o_rows.to(wd, s);
    merge_attention(acc, out.lse.slice(2, lb, lb + hp.h), far.o, far.lse, s);
    if (acc.raw() != o_rows.raw()) o_rows.copy_from(acc, s);
  }
  return out;
}

attn::FlashGrads window_attention_backward(Comm& ring, const Layout& layout, const Tensor& q, const Tensor& k,
                                           const Tensor& v, const Tensor& o, const Tensor& lse, const Tensor& dout,
                                           const attn::FlashOptions& opts, attn::OutputDType grad_dtype, Stream s) {
  const Layout rl = ring_level(layout);
  const auto segs = rl.segments(ring.rank());
  const int64_t W = opts.window_left;
  std::vector<Tensor> hk, hv;
  if (W > 0) hk = halo_forward(ring, rl, k, W, s), hv = halo_forward(ring, rl, v, W, s);
  const DType wd = wide_dtype(q.dtype()), gd = grad_dtype == attn::OutputDType::f32 ? wd : q.dtype();
  const attn::FlashOptions lo = local_options(opts);
  attn::FlashGrads g{Tensor::empty(q.shape(), gd, q.device()), Tensor::empty(k.shape(), gd, q.device()),
                     Tensor::empty(k.shape(), gd, q.device())};
  Shape hshape = k.shape();
  hshape[1] = W;
  std::vector<Tensor> dhk, dhv;  // the halos' gradients, going back to their owners
  for (size_t i = 0; i < segs.size(); ++i) {
    const int64_t lb = segs[i].local_begin, le = lb + segs[i].length;
    attn::flash_backward(rows(q, lb, le), rows(k, lb, le), rows(v, lb, le), rows(o, lb, le), lse.slice(2, lb, le),
                         rows(dout, lb, le), lo, attn::GradMode::overwrite,
                         {rows(g.dq, lb, le), rows(g.dk, lb, le), rows(g.dv, lb, le)}, s);
    const HaloPart hp = halo_part(opts, segs[i]);
    if (W == 0) continue;
    dhk.push_back(Tensor::zeros(hshape, wd, q.device(), s));
    dhv.push_back(Tensor::zeros(hshape, wd, q.device(), s));
    if (hp.h == 0) continue;
    const int64_t qe = lb + hp.h;
    const Tensor dq = Tensor::empty(rows(q, lb, qe).shape(), wd, q.device());
    attn::flash_backward(rows(q, lb, qe), rows(hk[i], hp.a, W), rows(hv[i], hp.a, W), rows(o, lb, qe),
                         lse.slice(2, lb, qe), rows(dout, lb, qe), hp.opts, attn::GradMode::overwrite,
                         {dq, rows(dhk[i], hp.a, W), rows(dhv[i], hp.a, W)}, s);
    rows(g.dq, lb, qe).add_from(dq, s);  // bf16/f16 rows: summed in fp32, rounded once
  }
  if (W > 0) {
    halo_backward(ring, rl, dhk, g.dk, s);
    halo_backward(ring, rl, dhv, g.dv, s);
  }
  return g;
}

}  // namespace lctx::dist
