#include "dist/state_scan.h"

#include <algorithm>
#include <string>
#include <utility>

#include "dist/ring_kernels.h"  // block_of

namespace lctx::dist {

namespace {

bool is_float(DType d) { return d == DType::f64 || d == DType::f32 || d == DType::bf16 || d == DType::f16; }

std::string indexed(const char* name, size_t k) { return lctx::detail::cat(name, "[", k, "]"); }

template <class T>
void scan_cpu(const detail::ScanParams& p) {
  const int64_t size = p.rows * p.m;
#pragma omp parallel for schedule(static) if (size * p.steps > 65536)
  for (int64_t i = 0; i < size; ++i) detail::scan_element<T>(p, i);
}

template <class T>
void row_dot_cpu(const detail::RowDotParams& p) {
  const T* x = static_cast<const T*>(p.x);
  const T* y = static_cast<const T*>(p.y);
  T* out = static_cast<T*>(p.out);
#pragma omp parallel for schedule(static) if (p.rows * p.m > 65536)
  for (int64_t r = 0; r < p.rows; ++r) {
    T acc = 0;
    for (int64_t k = 0; k < p.m; ++k) acc += x[r * p.m + k] * y[r * p.m + k];
    out[r] = acc;
  }
}

// What forward and backward share: the validated summaries, where every segment sits in the
// global order, the all-gather of per-segment (a, x) pairs and the scan over them.
struct ScanCall {
  const char* op;
  Comm& sp;
  Stream s;
  int64_t B = 0, n = 0, m = 0;
  DType wd = DType::f32;  // scan dtype: f64 for f64 summaries, else f32
  Device dev;
  int64_t slots_per_rank = 0;      // the most segments any rank holds (the gathered blocks)
  std::vector<int64_t> order;      // slot (rank * slots_per_rank + local segment) of each global segment
  std::vector<int64_t> local_pos;  // global index of each local segment
  std::vector<Tensor> a;           // this rank's decays, per local segment

  ScanCall(const char* name, Comm& c, const Layout& layout, std::span<const Affine> local, Stream st)
      : op(name), sp(c), s(st) {
    LCTX_CHECK(sp.size() == layout.size(), op, ": communicator of size ", sp.size(), " for ", layout.str());
    const size_t nseg = layout.segments(sp.rank()).size();
    LCTX_CHECK(local.size() == nseg, op, ": ", local.size(), " summaries for the ", nseg, " segments of sp rank ",
               sp.rank(), " (", layout.str(), ")");
    const Tensor& e0 = local[0].e;
    LCTX_CHECK(e0.defined() && e0.dim() == 3, op, ": e[0] ", e0.defined() ? e0.str() : "(undefined)",
               " must be [B, n, m]");
    LCTX_CHECK(is_float(e0.dtype()), op, ": e[0] ", e0.str(), " must have a float dtype");
    B = e0.size(0);
    n = e0.size(1);
    m = e0.size(2);
    wd = wide_dtype(e0.dtype());
    dev = e0.device();
#ifndef LCTX_HAVE_CUDA
    LCTX_CHECK(dev.is_cpu(), op, ": e[0] ", e0.str(),
               " is a CUDA tensor but lctx was built without CUDA (LCTX_CUDA=OFF)");
#endif
    for (size_t k = 0; k < nseg; ++k) {
      check_shape(op, indexed("e", k).c_str(), local[k].e, {B, n, m});
      check_shape(op, indexed("a", k).c_str(), local[k].a, {B, n});
      for (auto [name, t] : {std::pair{"a", &local[k].a}, std::pair{"e", &local[k].e}})
        LCTX_CHECK(t->dtype() == e0.dtype() && t->device() == dev, op, ": ", indexed(name, k), " ", t->str(),
                   " must have the dtype and device of e[0] ", e0.str());
      a.push_back(local[k].a);
    }
    std::vector<std::pair<int64_t, int64_t>> starts;  // (global begin, slot) of every segment
    for (int r = 0; r < layout.size(); ++r)
      slots_per_rank = std::max<int64_t>(slots_per_rank, static_cast<int64_t>(layout.segments(r).size()));
    for (int r = 0; r < layout.size(); ++r) {
      const auto segs = layout.segments(r);
      for (size_t k = 0; k < segs.size(); ++k) starts.emplace_back(segs[k].global_begin, r * slots_per_rank + k);
    }
    std::sort(starts.begin(), starts.end());
    local_pos.resize(nseg);
    for (size_t j = 0; j < starts.size(); ++j) {
      order.push_back(starts[j].second);
      const int64_t slot = starts[j].second;
      if (slot / slots_per_rank == sp.rank()) local_pos[slot % slots_per_rank] = static_cast<int64_t>(j);
    }
  }

  int64_t segments() const { return static_cast<int64_t>(order.size()); }

  // Checks a [B, n, m] state (or its gradient).
  void check_state(const std::string& name, const Tensor& t) const {
    check_shape(op, name.c_str(), t, {B, n, m});
    LCTX_CHECK(is_float(t.dtype()) && t.device() == dev, op, ": ", name, " ", t.str(), " must be a float tensor on ",
               dev.str());
  }

  // A checked state as a contiguous tensor of the scan dtype.
  Tensor state(const std::string& name, const Tensor& t) const {
    check_state(name, t);
    return t.dtype() == wd ? t.contiguous(s) : t.to(wd, s).contiguous(s);
  }

  // Every rank's (a, x) of every segment: [ranks * slots_per_rank, B*n*(m+1)] in the scan
  // dtype, one all-gather.
  Tensor gather(std::span<const Tensor> x) const {
    const int64_t rows = B * n, width = rows * (m + 1);
    Tensor mine = Tensor::zeros({slots_per_rank, width}, wd, dev, s);
    for (size_t k = 0; k < a.size(); ++k) {
      const Tensor slot = block_of(mine, static_cast<int64_t>(k));
      slot.slice(0, 0, rows).view({B, n}).copy_from(a[k], s);
      slot.slice(0, rows, width).view({B, n, m}).copy_from(x[k], s);
    }
    Tensor all = Tensor::empty({sp.size() * slots_per_rank, width}, wd, dev);
    sp.all_gather(mine, all, s);
    return all;
  }

  // [steps + 1, B, n, m]: the state before each step of `steps` (slots of `all`), then after.
  Tensor scan(const Tensor& all, const std::vector<int64_t>& steps, const Tensor& h0) const {
    Tensor states = Tensor::empty({static_cast<int64_t>(steps.size()) + 1, B, n, m}, wd, dev);
    if (states.numel() == 0) return states;
    detail::ScanParams p;
    p.slots = all.raw();
    p.h0 = h0.defined() ? h0.raw() : nullptr;
    p.states = states.raw();
    p.steps = static_cast<int64_t>(steps.size());
    p.rows = B * n;
    p.m = m;
    p.dtype = wd;
    p.device = dev.index;
    if (dev.is_cpu()) {
      p.order = steps.data();
      if (wd == DType::f64) scan_cpu<double>(p);
      else scan_cpu<float>(p);
      return states;
    }
#ifdef LCTX_HAVE_CUDA
    const std::vector<double> v(steps.begin(), steps.end());
    const Tensor order_dev = Tensor::from_vector({p.steps}, v, DType::i64).to(dev, s);
    p.order = order_dev.data<int64_t>();
    detail::scan_cuda(p, s);
#endif
    return states;
  }

  // [B, n]: the sum over m of g * h.
  Tensor row_dot(const Tensor& g, const Tensor& h) const {
    Tensor out = Tensor::empty({B, n}, wd, dev);
    if (out.numel() == 0) return out;
    const detail::RowDotParams p{g.raw(), h.raw(), out.raw(), B * n, m, wd, dev.index};
    if (dev.is_cpu()) {
      if (wd == DType::f64) row_dot_cpu<double>(p);
      else row_dot_cpu<float>(p);
      return out;
    }
#ifdef LCTX_HAVE_CUDA
    detail::row_dot_cuda(p, s);
#endif
    return out;
  }
};

}  // namespace

ScanResult state_scan_forward(Comm& sp, const Layout& layout, std::span<const Affine> local, const Tensor& h0,
                              Stream s) {
  const ScanCall c("state_scan_forward", sp, layout, local, s);
  std::vector<Tensor> e;
  for (const Affine& l : local) e.push_back(l.e);
  const Tensor start = h0.defined() ? c.state("h0", h0) : Tensor{};
  const Tensor states = c.scan(c.gather(e), c.order, start);
  ScanResult r;
  for (int64_t j : c.local_pos) r.incoming.push_back(block_of(states, j));
  r.final_state = block_of(states, c.segments());
  return r;
}

ScanGrads state_scan_backward(Comm& sp, const Layout& layout, std::span<const Affine> local, const ScanResult& fwd,
                              std::span<const Tensor> d_incoming, const Tensor& d_final, Stream s) {
  const ScanCall c("state_scan_backward", sp, layout, local, s);
  const size_t nseg = local.size();
  LCTX_CHECK(d_incoming.size() == nseg && fwd.incoming.size() == nseg, c.op, ": ", d_incoming.size(),
             " incoming-state gradients and ", fwd.incoming.size(), " forward states for the ", nseg,
             " segments of sp rank ", sp.rank(), " (", layout.str(), ")");
  std::vector<Tensor> d_in, h_in;
  for (size_t k = 0; k < nseg; ++k) {
    c.check_state(indexed("d_incoming", k), d_incoming[k]);
    d_in.push_back(d_incoming[k]);
    h_in.push_back(c.state(indexed("fwd.incoming", k), fwd.incoming[k]));
  }
  // The reverse scan: step t is global segment K-1-t, so states[t] = G_{K-t} and states[K] = G_0.
  const std::vector<int64_t> reverse(c.order.rbegin(), c.order.rend());
  const Tensor start = d_final.defined() ? c.state("d_final", d_final) : Tensor{};
  const Tensor states = c.scan(c.gather(d_in), reverse, start);
  ScanGrads g;
  for (size_t k = 0; k < nseg; ++k) {
    const Tensor g_next = block_of(states, c.segments() - 1 - c.local_pos[k]);  // G_{j+1}
    g.d_local.push_back({c.row_dot(g_next, h_in[k]), g_next});
  }
  g.d_h0 = block_of(states, c.segments());
  return g;
}

}  // namespace lctx::dist
