// Sequence parallelism for recurrent kernels (recurrent_sp.h): the order of the kernel calls
// around state_scan_forward / state_scan_backward.
#include "dist/recurrent_sp.h"

namespace lctx::dist {

namespace {

bool starts_sequence(const Segment& g) { return g.global_begin == 0; }
bool ends_sequence(const Layout& layout, const Segment& g) { return g.global_begin + g.length == layout.seq_len(); }

}  // namespace

RecurrentScan recurrent_forward(Comm& sp, const Layout& layout, const SegmentKernel& k, Stream s) {
  const std::vector<Segment> segs = layout.segments(sp.rank());
  RecurrentScan r;
  for (const Segment& g : segs) r.summaries.push_back({k.decay(g), k.forward(g, Tensor())});
  r.scan = state_scan_forward(sp, layout, r.summaries, Tensor(), s);
  for (size_t i = 0; i < segs.size(); ++i)
    if (!starts_sequence(segs[i])) k.forward(segs[i], r.scan.incoming[i]);
  return r;
}

void recurrent_backward(Comm& sp, const Layout& layout, const SegmentKernel& k, const RecurrentScan& saved, Stream s) {
  const std::vector<Segment> segs = layout.segments(sp.rank());
  std::vector<Tensor> d_incoming;
  for (size_t i = 0; i < segs.size(); ++i) {
    const Tensor& e = saved.summaries[i].e;
    d_incoming.push_back(starts_sequence(segs[i]) ? Tensor::zeros(e.shape(), e.dtype(), e.device(), s)
                                                  : k.backward(segs[i], saved.scan.incoming[i], Tensor(), true));
  }
  const ScanGrads g = state_scan_backward(sp, layout, saved.summaries, saved.scan, d_incoming, Tensor(), s);
  for (size_t i = 0; i < segs.size(); ++i) {
    const Tensor& d_final = g.d_local[i].e;  // the gradient of the state leaving segment i
    if (starts_sequence(segs[i]))
      k.backward(segs[i], Tensor(), d_final, true);
    else if (!ends_sequence(layout, segs[i]))
      k.backward(segs[i], saved.scan.incoming[i], d_final, false);
  }
}

}  // namespace lctx::dist
