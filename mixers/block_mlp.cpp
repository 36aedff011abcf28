#include "mixers/block_mlp.h"

#include "dist/comm.h"
#include "dist/ring_kernels.h"  // block_of
#include "mixers/attention_parts.h"
#include "ops/gelu.h"
#include "ops/linear.h"

namespace lctx::mixers {

namespace {

struct LocalBlock {
  int64_t row;    // its first row in local order
  int64_t block;  // its global index c
};

// The complete blocks (c < N) whose rows this rank holds: each must be whole and consecutive.
std::vector<LocalBlock> local_blocks(std::span<const int64_t> pos, int64_t b, int64_t N) {
  const int64_t L = static_cast<int64_t>(pos.size());
  std::vector<LocalBlock> out;
  int64_t rows = 0;  // local rows that fall in a complete block
  for (int64_t l = 0; l < L; ++l) {
    const int64_t p = pos[static_cast<size_t>(l)];
    if (p / b >= N) continue;
    ++rows;
    if (p % b != 0) continue;
    bool whole = l + b <= L;
    for (int64_t t = 1; whole && t < b; ++t) whole = pos[static_cast<size_t>(l + t)] == p + t;
    LCTX_CHECK(whole, "block mlp: block ", p / b, " (positions [", p, ", ", p + b,
               ")) is not held whole by one rank; the compression block (compress_block ", b,
               ") must divide every segment of the layout");
    out.push_back({l, p / b});
  }
  LCTX_CHECK(rows == static_cast<int64_t>(out.size()) * b, "block mlp: this rank holds ", rows,
             " rows of complete blocks but only ", out.size(), " whole blocks of ", b,
             "; the compression block (compress_block) must divide every segment of the layout");
  return out;
}

enum class Move { pack, unpack };

// pack:   packed[b, j, kh, t hd + e] = rows[b, row_j + t, kh, e] + pos[t, e]
// unpack: rows[b, row_j + t, kh, e] += packed[b, j, kh, t hd + e]
// rows [B, L, Hkv, hd], packed [B, n, Hkv, b hd], pos [b, hd] (pack only); contiguous, one dtype.
void move_blocks(const Tensor& rows, const Tensor& packed, const Tensor& pos, std::span<const LocalBlock> blocks,
                 int64_t b, Move dir) {
  const int64_t B = rows.size(0), L = rows.size(1), Hk = rows.size(2), hd = rows.size(3);
  const int64_t n = static_cast<int64_t>(blocks.size());
  LCTX_DISPATCH_CPU_FLOAT(rows.dtype(), "block mlp packing", [&] {
    scalar_t* x = rows.data<scalar_t>();
    scalar_t* c = packed.data<scalar_t>();
    const scalar_t* pe = dir == Move::pack ? pos.data<scalar_t>() : nullptr;
    for (int64_t bi = 0; bi < B; ++bi)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t t = 0; t < b; ++t)
          for (int64_t kh = 0; kh < Hk; ++kh) {
            scalar_t* xr = x + ((bi * L + blocks[static_cast<size_t>(j)].row + t) * Hk + kh) * hd;
            scalar_t* cr = c + ((bi * n + j) * Hk + kh) * b * hd + t * hd;
            if (dir == Move::pack)
              for (int64_t e = 0; e < hd; ++e) cr[e] = xr[e] + pe[t * hd + e];
            else
              for (int64_t e = 0; e < hd; ++e) xr[e] += cr[e];
          }
  });
}

// to[:, c_j] = from[:, j] (to_global) or to[:, j] = from[:, c_j] (to_local), c_j the global index
// of local block j; [B, *, Hkv, hd], one dtype.
enum class Rows { to_global, to_local };
void copy_rows(const Tensor& to, const Tensor& from, std::span<const LocalBlock> blocks, Rows dir) {
  for (size_t j = 0; j < blocks.size(); ++j) {
    const int64_t a = static_cast<int64_t>(j), c = blocks[j].block;
    if (dir == Rows::to_global)
      to.slice(1, c, c + 1).copy_from(from.slice(1, a, a + 1));
    else
      to.slice(1, a, a + 1).copy_from(from.slice(1, c, c + 1));
  }
}

// One compressor's activations on this rank's blocks: x [B, n, Hkv, b hd] (rows + pos),
// h_pre = x W1^T + b1, h = gelu(h_pre) [B, n, Hkv, hidden].
struct Acts {
  Tensor x, h_pre, h;
};

Acts mlp_hidden(const Tensor& rows, std::span<const LocalBlock> blocks, int64_t b, const BlockMlp& w) {
  LCTX_CHECK(rows.device().is_cpu(), "block mlp: rows ", rows.str(),
             " are on a GPU; the learned block compression runs on the CPU only so far");
  const int64_t B = rows.size(0), Hk = rows.size(2), hd = rows.size(3), n = static_cast<int64_t>(blocks.size());
  const int64_t hidden = w.w1.size(0);
  LCTX_CHECK(w.pos.dim() == 2 && w.pos.size(0) == b && w.pos.size(1) == hd && w.w1.dim() == 2 &&
                 w.w1.size(1) == b * hd && w.w2.dim() == 2 && w.w2.size(0) == hd && w.w2.size(1) == hidden &&
                 w.pos.dtype() == rows.dtype() && w.w1.dtype() == rows.dtype() && w.w2.dtype() == rows.dtype(),
             "block mlp: weights pos ", w.pos.str(), ", w1 ", w.w1.str(), ", w2 ", w.w2.str(), " do not fit rows ",
             rows.str(), " in blocks of ", b, " (expected pos [", b, ", ", hd, "], w1 [hidden, ", b * hd,
             "], w2 [", hd, ", hidden], the rows' dtype)");
  Acts a;
  a.x = Tensor::empty({B, n, Hk, b * hd}, rows.dtype());
  move_blocks(rows.contiguous(), a.x, w.pos.contiguous(), blocks, b, Move::pack);
  a.h_pre = Tensor::empty({B, n, Hk, hidden}, rows.dtype());
  ops::linear_forward(a.h_pre, a.x, w.w1, w.b1);
  a.h = Tensor::empty(a.h_pre.shape(), rows.dtype());
  ops::gelu_forward(a.h, a.h_pre);
  return a;
}

// This rank's compressed rows of one compressor into out [B, N, Hkv, hd] (wide, zero elsewhere).
void compress(const Tensor& out, const Tensor& rows, std::span<const LocalBlock> blocks, int64_t b,
              const BlockMlp& w) {
  if (blocks.empty()) return;
  const Acts a = mlp_hidden(rows, blocks, b, w);
  Tensor y = Tensor::empty({rows.size(0), a.x.size(1), rows.size(2), rows.size(3)}, rows.dtype());
  ops::linear_forward(y, a.h, w.w2, w.b2);
  copy_rows(out, cast(y, out.dtype()), blocks, Rows::to_global);
}

// One compressor's backward on this rank's blocks: dc [B, N, Hkv, hd] (wide, summed), the
// parameter gradients overwritten, the rows' gradients added into d_rows (wide).
void compress_backward(const Tensor& dc, const Tensor& rows, std::span<const LocalBlock> blocks, int64_t b,
                       const BlockMlp& w, const BlockMlp& g, const Tensor& d_rows) {
  if (blocks.empty()) {
    for (Tensor t : {g.pos, g.w1, g.b1, g.w2, g.b2}) t.zero();
    return;
  }
  const Acts a = mlp_hidden(rows, blocks, b, w);
  const DType dt = rows.dtype();
  const Tensor dy_wide = Tensor::empty({rows.size(0), a.x.size(1), rows.size(2), rows.size(3)}, dc.dtype());
  copy_rows(dy_wide, dc, blocks, Rows::to_local);
  const Tensor dy = cast(dy_wide, dt);
  Tensor dh = Tensor::empty(a.h.shape(), dt), dh_pre = Tensor::empty(a.h.shape(), dt);
  Tensor dx = Tensor::empty(a.x.shape(), dt);
  Tensor gw2 = g.w2, gb2 = g.b2, gw1 = g.w1, gb1 = g.b1;
  ops::linear_backward(dh, gw2, gb2, dy, a.h, w.w2, GradMode::overwrite);
  ops::gelu_backward(dh_pre, dh, a.h_pre);
  ops::linear_backward(dx, gw1, gb1, dh_pre, a.x, w.w1, GradMode::overwrite);
  // pos's gradient: dx summed over (batch, block, KV head), in the gradients' dtype.
  const Tensor dxw = cast(dx, g.pos.dtype()).contiguous();
  const Tensor dpos = Tensor::zeros(g.pos.shape(), g.pos.dtype());
  const int64_t R = dpos.numel(), rowsn = dxw.numel() / R;
  LCTX_DISPATCH_CPU_FLOAT(dpos.dtype(), "block mlp position gradient", [&] {
    const scalar_t* src = dxw.data<scalar_t>();
    scalar_t* dst = dpos.data<scalar_t>();
    for (int64_t r = 0; r < rowsn; ++r)
      for (int64_t e = 0; e < R; ++e) dst[e] += src[r * R + e];
  });
  Tensor gpos = g.pos;
  gpos.copy_from(dpos);
  move_blocks(d_rows, cast(dx, d_rows.dtype()).contiguous(), Tensor(), blocks, b, Move::unpack);
}

}  // namespace

std::vector<ParamSpec> block_mlp_param_specs(const std::string& prefix, int64_t block, int64_t head_dim,
                                             int64_t hidden) {
  std::vector<ParamSpec> p;
  for (const char* which : {"k", "v"}) {
    const std::string n = prefix + which + "_";
    p.push_back({.name = n + "pos", .shape = {block, head_dim}, .decay = Decay::none});
    p.push_back({.name = n + "w1", .shape = {hidden, block * head_dim}});
    p.push_back({.name = n + "b1", .shape = {hidden}, .decay = Decay::none, .init = Init::zeros});
    p.push_back({.name = n + "w2", .shape = {head_dim, hidden}});
    p.push_back({.name = n + "b2", .shape = {head_dim}, .decay = Decay::none, .init = Init::zeros});
  }
  return p;
}

BlockMlpPair block_mlp_view(std::span<const Param> p, ParamPart part) {
  LCTX_CHECK(p.size() == 10, "block mlp: ", p.size(), " parameters, expected 10 (k and v: pos, w1, b1, w2, b2)");
  const auto at = [&](size_t i) { return part == ParamPart::compute ? p[i].compute : p[i].grad; };
  return {{at(0), at(1), at(2), at(3), at(4)}, {at(5), at(6), at(7), at(8), at(9)}};
}

BlockRows block_mlp_forward(dist::Comm& sp, const Tensor& k, const Tensor& v, std::span<const int64_t> positions,
                            int64_t block, int64_t blocks, const BlockMlpPair& w) {
  LCTX_CHECK(block >= 1 && blocks >= 0, "block mlp: block ", block, " and ", blocks, " blocks");
  LCTX_CHECK(static_cast<int64_t>(positions.size()) == k.size(1) && k.shape() == v.shape(), "block mlp: ",
             positions.size(), " positions for k ", k.str(), " and v ", v.str());
  const std::vector<LocalBlock> mine = local_blocks(positions, block, blocks);
  const int64_t B = k.size(0), Hk = k.size(2), hd = k.size(3);
  const Tensor rows = Tensor::zeros({2, B, blocks, Hk, hd}, wide_dtype(k.dtype()), k.device());
  compress(dist::block_of(rows, 0), k, mine, block, w.k);
  compress(dist::block_of(rows, 1), v, mine, block, w.v);
  sp.all_reduce(rows, dist::ReduceOp::sum);
  return {cast(dist::block_of(rows, 0), k.dtype()), cast(dist::block_of(rows, 1), k.dtype())};
}

void block_mlp_backward(dist::Comm& sp, const Tensor& dc, const Tensor& k, const Tensor& v,
                        std::span<const int64_t> positions, int64_t block, const BlockMlpPair& w,
                        const BlockMlpPair& grads, const Tensor& dk, const Tensor& dv) {
  LCTX_CHECK(dc.dim() == 5 && dc.size(0) == 2 && dc.is_contiguous(), "block mlp: row gradients ", dc.str(),
             " must be a contiguous [2, B, N, Hkv, hd]");
  sp.all_reduce(dc, dist::ReduceOp::sum);
  const std::vector<LocalBlock> mine = local_blocks(positions, block, dc.size(2));
  compress_backward(dist::block_of(dc, 0), k, mine, block, w.k, grads.k, dk);
  compress_backward(dist::block_of(dc, 1), v, mine, block, w.v, grads.v, dv);
}

}  // namespace lctx::mixers
