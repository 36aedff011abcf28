#include "dist/halo.h"

#include <algorithm>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace lctx::dist {

namespace {

// Rows [src_row, src_row + length) of rank `src` are rows [dst_row, dst_row + length) of the
// halo of local segment `seg` of rank `dst`.
struct Route {
  int src = 0, dst = 0, seg = 0;
  int64_t src_row = 0, dst_row = 0, length = 0;
};

// Every rank's routes, in one order all ranks agree on.
std::vector<Route> routes(const Layout& layout, int64_t width) {
  std::vector<Route> out;
  for (int q = 0; q < layout.size(); ++q) {
    const auto segs = layout.segments(q);
    for (size_t k = 0; k < segs.size(); ++k) {
      const int64_t g = segs[k].global_begin, lo = std::max<int64_t>(0, g - width);
      std::vector<int64_t> pos(g - lo);
      std::iota(pos.begin(), pos.end(), lo);
      for (const OwnerRun& r : layout.owner_runs(pos))
        out.push_back({r.sp_rank, q, static_cast<int>(k), r.local_begin, lo - (g - width) + r.index, r.length});
    }
  }
  return out;
}

enum class Flow { to_halo, to_owner };

// Calls fn(route, rows) for each route's rows of a message packed in the order of `rs`.
template <class Fn>
void each_packed(const std::vector<const Route*>& rs, const Tensor& message, Fn fn) {
  int64_t off = 0;
  for (const Route* r : rs) {
    fn(*r, message.slice(1, off, off + r->length));
    off += r->length;
  }
}

// Moves the rows of every route from its sending rank (src for Flow::to_halo, dst for
// Flow::to_owner) to its receiving rank: source(route) is the [B, length, ...] view the sender
// reads, sink(route, rows) consumes the rows on the receiver. Rows that stay on a rank go
// directly; the others travel in rounds d = 1..P-1 (send to rank + d, receive from rank - d),
// packed in route order, the rounds no route uses skipped on every rank. `like` gives the
// dtype, device and row shape of the messages.
template <class Source, class Sink>
void exchange(Comm& sp, const std::vector<Route>& routes, Flow flow, const Tensor& like, Source source, Sink sink,
              Stream s) {
  const int P = sp.size(), me = sp.rank();
  auto sender = [&](const Route& r) { return flow == Flow::to_halo ? r.src : r.dst; };
  auto receiver = [&](const Route& r) { return flow == Flow::to_halo ? r.dst : r.src; };
  std::vector<bool> used(P, false);
  for (const Route& r : routes) {
    if (sender(r) != receiver(r)) used[(receiver(r) - sender(r) + P) % P] = true;
    else if (sender(r) == me) sink(r, source(r));
  }
  auto message = [&](int from, int to) {  // the routes of one message, and its rows
    std::vector<const Route*> rs;
    int64_t rows = 0;
    for (const Route& r : routes)
      if (sender(r) == from && receiver(r) == to) {
        rs.push_back(&r);
        rows += r.length;
      }
    Shape shape = like.shape();
    shape[1] = rows;
    return std::pair{rs, Tensor::empty(shape, like.dtype(), like.device())};
  };
  struct Round {
    std::vector<const Route*> in;
    Tensor send, recv;
    Request req;
  };
  std::vector<Round> rounds;
  for (int d = 1; d < P; ++d) {
    if (!used[d]) continue;
    const int to = (me + d) % P, from = (me - d + P) % P;
    auto [out, send] = message(me, to);
    each_packed(out, send, [&](const Route& r, Tensor rows) { rows.copy_from(source(r), s); });
    auto [in, recv] = message(from, me);
    Request req = sp.sendrecv(send, to, recv, from, s);
    rounds.push_back({std::move(in), send, recv, std::move(req)});
  }
  for (Round& rd : rounds) {
    rd.req.wait(s);
    each_packed(rd.in, rd.recv, sink);
  }
}

void check_tokens(const char* op, const char* name, const Tensor& t, const Layout& layout) {
  LCTX_CHECK(t.defined() && t.dim() >= 2 && t.size(1) == layout.local_len(), op, ": ", name, " ",
             t.defined() ? t.str() : "(undefined)", " must be [B, ", layout.local_len(),
             ", ...]: this rank's tokens of ", layout.str());
}

void check_comm(const char* op, const Comm& sp, const Layout& layout) {
  LCTX_CHECK(sp.size() == layout.size(), op, ": communicator of size ", sp.size(), " for ", layout.str());
}

}  // namespace

std::vector<Tensor> halo_forward(Comm& sp, const Layout& layout, const Tensor& x, int64_t width, Stream s) {
  const char* op = "halo_forward";
  check_comm(op, sp, layout);
  check_tokens(op, "x", x, layout);
  LCTX_CHECK(width >= 0, op, ": width ", width, " must be >= 0");
  Shape shape = x.shape();
  shape[1] = width;
  std::vector<Tensor> halo;
  for (size_t k = 0; k < layout.segments(sp.rank()).size(); ++k)
    halo.push_back(Tensor::zeros(shape, x.dtype(), x.device(), s));
  exchange(
      sp, routes(layout, width), Flow::to_halo, x,
      [&](const Route& r) { return x.slice(1, r.src_row, r.src_row + r.length); },
      [&](const Route& r, const Tensor& rows) {
        halo[r.seg].slice(1, r.dst_row, r.dst_row + r.length).copy_from(rows, s);
      },
      s);
  return halo;
}

void halo_backward(Comm& sp, const Layout& layout, std::span<const Tensor> dhalo, Tensor& dx, Stream s) {
  const char* op = "halo_backward";
  check_comm(op, sp, layout);
  check_tokens(op, "dx", dx, layout);
  const size_t nseg = layout.segments(sp.rank()).size();
  LCTX_CHECK(dhalo.size() == nseg, op, ": ", dhalo.size(), " halo gradients for the ", nseg, " segments of sp rank ",
             sp.rank(), " (", layout.str(), ")");
  LCTX_CHECK(dhalo[0].defined() && dhalo[0].dim() == dx.dim(), op, ": dhalo[0] ",
             dhalo[0].defined() ? dhalo[0].str() : "(undefined)", " must be [B, width, ...] like dx ", dx.str());
  Shape shape = dx.shape();
  shape[1] = dhalo[0].size(1);
  const DType wide = wide_dtype(dx.dtype());
  LCTX_CHECK(dx.dtype() == wide || dx.device().is_cuda(), op, ": dx ", dx.str(),
             " must be f32 or f64 on the CPU (gradients accumulate into it)");
  for (size_t k = 0; k < nseg; ++k) {
    const std::string name = lctx::detail::cat("dhalo[", k, "]");
    check_shape(op, name.c_str(), dhalo[k], shape);
    check_dtype(op, name.c_str(), dhalo[k], wide);
    check_same_device(op, {&dhalo[k], &dx});
  }
  exchange(
      sp, routes(layout, shape[1]), Flow::to_owner, dhalo[0],
      [&](const Route& r) { return dhalo[r.seg].slice(1, r.dst_row, r.dst_row + r.length); },
      [&](const Route& r, const Tensor& rows) { dx.slice(1, r.src_row, r.src_row + r.length).add_from(rows, s); }, s);
}

}  // namespace lctx::dist
