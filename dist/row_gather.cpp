#include "dist/row_gather.h"

#include <algorithm>

#include "dist/ring_kernels.h"  // block_of

namespace lctx::dist {

namespace {

// Where the listed rows travel: each owner packs its runs, in list order, into a block of
// `block_rows` rows (the most any rank holds); offset[i] is run i's first row in its block.
struct Packing {
  std::vector<OwnerRun> runs;
  std::vector<int64_t> offset;
  int64_t block_rows = 0;

  Packing(const Layout& layout, std::span<const int64_t> positions) : runs(layout.owner_runs(positions)) {
    std::vector<int64_t> fill(layout.size(), 0);
    for (const OwnerRun& r : runs) {
      offset.push_back(fill[r.sp_rank]);
      fill[r.sp_rank] += r.length;
    }
    block_rows = *std::max_element(fill.begin(), fill.end());
  }

  // Shape of `t` [B, *, ...] with `rows` rows, after `lead` leading dims.
  static Shape with_rows(const Tensor& t, int64_t rows, Shape lead = {}) {
    Shape s = t.shape();
    s[1] = rows;
    lead.insert(lead.end(), s.begin(), s.end());
    return lead;
  }
};

void check_call(const char* op, const Comm& sp, const Layout& layout, const char* name, const Tensor& t) {
  LCTX_CHECK(sp.size() == layout.size(), op, ": communicator of size ", sp.size(), " for ", layout.str());
  LCTX_CHECK(t.defined() && t.dim() >= 2 && t.size(1) == layout.local_len(), op, ": ", name, " ",
             t.defined() ? t.str() : "(undefined)", " must be [B, ", layout.local_len(),
             ", ...]: this rank's tokens of ", layout.str());
}

}  // namespace

Tensor row_gather_forward(Comm& sp, const Layout& layout, const Tensor& x, std::span<const int64_t> positions,
                          Stream s) {
  check_call("row_gather_forward", sp, layout, "x", x);
  const Packing pk(layout, positions);
  const int me = sp.rank();
  const Tensor mine = Tensor::empty(Packing::with_rows(x, pk.block_rows), x.dtype(), x.device());
  for (size_t i = 0; i < pk.runs.size(); ++i) {
    const OwnerRun& r = pk.runs[i];
    if (r.sp_rank == me)
      mine.slice(1, pk.offset[i], pk.offset[i] + r.length)
          .copy_from(x.slice(1, r.local_begin, r.local_begin + r.length), s);
  }
  const Tensor all = Tensor::empty(Packing::with_rows(x, pk.block_rows, {sp.size()}), x.dtype(), x.device());
  sp.all_gather(mine, all, s);
  Tensor rows = Tensor::empty(Packing::with_rows(x, static_cast<int64_t>(positions.size())), x.dtype(), x.device());
  for (size_t i = 0; i < pk.runs.size(); ++i) {
    const OwnerRun& r = pk.runs[i];
    rows.slice(1, r.index, r.index + r.length)
        .copy_from(block_of(all, r.sp_rank).slice(1, pk.offset[i], pk.offset[i] + r.length), s);
  }
  return rows;
}

void row_gather_backward(Comm& sp, const Layout& layout, const Tensor& drows, std::span<const int64_t> positions,
                         Tensor& dx, Stream s) {
  const char* op = "row_gather_backward";
  check_call(op, sp, layout, "dx", dx);
  check_shape(op, "drows", drows, Packing::with_rows(dx, static_cast<int64_t>(positions.size())));
  check_same_device(op, {&drows, &dx});
  LCTX_CHECK(dx.dtype() == DType::f32 || dx.dtype() == DType::f64, op, ": dx ", dx.str(),
             " must be f32 or f64 (gradients accumulate into it)");
  const Packing pk(layout, positions);
  const Tensor send =
      Tensor::zeros(Packing::with_rows(dx, pk.block_rows, {sp.size()}), dx.dtype(), dx.device(), s);
  for (size_t i = 0; i < pk.runs.size(); ++i) {
    const OwnerRun& r = pk.runs[i];
    block_of(send, r.sp_rank)
        .slice(1, pk.offset[i], pk.offset[i] + r.length)
        .copy_from(drows.slice(1, r.index, r.index + r.length), s);
  }
  const Tensor mine = Tensor::empty(Packing::with_rows(dx, pk.block_rows), dx.dtype(), dx.device());
  sp.reduce_scatter(send, mine, ReduceOp::sum, s);
  for (size_t i = 0; i < pk.runs.size(); ++i) {
    const OwnerRun& r = pk.runs[i];
    if (r.sp_rank == sp.rank())
      dx.slice(1, r.local_begin, r.local_begin + r.length)
          .add_from(mine.slice(1, pk.offset[i], pk.offset[i] + r.length), s);
  }
}

}  // namespace lctx::dist
