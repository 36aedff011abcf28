#include "mixers/block_mlp.h"

#include <limits>
#include <vector>

#include "dist/comm.h"
#include "dist/ring_kernels.h"  // block_of
#include "mixers/attention_parts.h"
#include "ops/embedding.h"
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

// Where the packed rows come from: entry ((bi n + j) Hkv + kh) b + t of x viewed as
// [B n Hkv b, hd] is row ((bi L + row_j + t) Hkv + kh) of rows [B L Hkv, hd] plus row t of pos
// (i32 indices on the rows' device, for ops::embedding's gather and scatter-add).
struct PackIndex {
  Tensor row, pos;
};

PackIndex pack_index(const Tensor& rows, std::span<const LocalBlock> blocks, int64_t b) {
  const int64_t B = rows.size(0), L = rows.size(1), Hk = rows.size(2);
  LCTX_CHECK(B * L * Hk <= std::numeric_limits<int32_t>::max(), "block mlp: rows ", rows.str(),
             " hold 2^31 rows of head_dim or more");
  std::vector<double> row, pos;
  for (int64_t bi = 0; bi < B; ++bi)
    for (const LocalBlock& blk : blocks)
      for (int64_t kh = 0; kh < Hk; ++kh)
        for (int64_t t = 0; t < b; ++t) {
          row.push_back(static_cast<double>((bi * L + blk.row + t) * Hk + kh));
          pos.push_back(static_cast<double>(t));
        }
  const int64_t n = static_cast<int64_t>(row.size());
  return {Tensor::from_vector({n}, row, DType::i32).to(rows.device()),
          Tensor::from_vector({n}, pos, DType::i32).to(rows.device())};
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

Acts mlp_hidden(const Tensor& rows, const PackIndex& ix, int64_t n, int64_t b, const BlockMlp& w) {
  const int64_t B = rows.size(0), Hk = rows.size(2), hd = rows.size(3), hidden = w.w1.size(0);
  const Device dev = rows.device();
  LCTX_CHECK(w.pos.dim() == 2 && w.pos.size(0) == b && w.pos.size(1) == hd && w.w1.dim() == 2 &&
                 w.w1.size(1) == b * hd && w.w2.dim() == 2 && w.w2.size(0) == hd && w.w2.size(1) == hidden &&
                 w.pos.dtype() == rows.dtype() && w.w1.dtype() == rows.dtype() && w.w2.dtype() == rows.dtype(),
             "block mlp: weights pos ", w.pos.str(), ", w1 ", w.w1.str(), ", w2 ", w.w2.str(), " do not fit rows ",
             rows.str(), " in blocks of ", b, " (expected pos [", b, ", ", hd, "], w1 [hidden, ", b * hd,
             "], w2 [", hd, ", hidden], the rows' dtype)");
  Acts a;
  Tensor x = Tensor::empty({ix.row.numel(), hd}, rows.dtype(), dev), p = Tensor::empty(x.shape(), rows.dtype(), dev);
  ops::embedding_forward(x, ix.row, rows.contiguous().view({-1, hd}));
  ops::embedding_forward(p, ix.pos, w.pos.contiguous());
  x.add_from(p);
  a.x = x.view({B, n, Hk, b * hd});
  a.h_pre = Tensor::empty({B, n, Hk, hidden}, rows.dtype(), dev);
  ops::linear_forward(a.h_pre, a.x, w.w1, w.b1);
  a.h = Tensor::empty(a.h_pre.shape(), rows.dtype(), dev);
  ops::gelu_forward(a.h, a.h_pre);
  return a;
}

// This rank's compressed rows of one compressor into out [B, N, Hkv, hd] (wide, zero elsewhere).
void compress(const Tensor& out, const Tensor& rows, std::span<const LocalBlock> blocks, const PackIndex& ix,
              int64_t b, const BlockMlp& w) {
  if (blocks.empty()) return;
  const int64_t n = static_cast<int64_t>(blocks.size());
  const Acts a = mlp_hidden(rows, ix, n, b, w);
  Tensor y = Tensor::empty({rows.size(0), n, rows.size(2), rows.size(3)}, rows.dtype(), rows.device());
  ops::linear_forward(y, a.h, w.w2, w.b2);
  copy_rows(out, cast(y, out.dtype()), blocks, Rows::to_global);
}

// One compressor's backward on this rank's blocks: dc [B, N, Hkv, hd] (wide, summed), the
// parameter gradients overwritten, the rows' gradients added into d_rows (wide, contiguous).
void compress_backward(const Tensor& dc, const Tensor& rows, std::span<const LocalBlock> blocks, const PackIndex& ix,
                       int64_t b, const BlockMlp& w, const BlockMlp& g, const Tensor& d_rows) {
  if (blocks.empty()) {
    for (Tensor t : {g.pos, g.w1, g.b1, g.w2, g.b2}) t.zero();
    return;
  }
  const int64_t n = static_cast<int64_t>(blocks.size()), hd = rows.size(3);
  const Acts a = mlp_hidden(rows, ix, n, b, w);
  const DType dt = rows.dtype();
  const Device dev = rows.device();
  const Tensor dy_wide = Tensor::empty({rows.size(0), n, rows.size(2), hd}, dc.dtype(), dev);
  copy_rows(dy_wide, dc, blocks, Rows::to_local);
  const Tensor dy = cast(dy_wide, dt);
  Tensor dh = Tensor::empty(a.h.shape(), dt, dev), dh_pre = Tensor::empty(a.h.shape(), dt, dev);
  Tensor dx = Tensor::empty(a.x.shape(), dt, dev);
  Tensor gw2 = g.w2, gb2 = g.b2, gw1 = g.w1, gb1 = g.b1;
  ops::linear_backward(dh, gw2, gb2, dy, a.h, w.w2, GradMode::overwrite);
  ops::gelu_backward(dh_pre, dh, a.h_pre);
  ops::linear_backward(dx, gw1, gb1, dh_pre, a.x, w.w1, GradMode::overwrite);
  // The packed rows' gradients: pos's summed over (batch, block, KV head) into its gradient, the
  // rows' added into d_rows (both in the wide dtype).
  const Tensor dx_rows = dx.view({-1, hd});
  Tensor gpos = g.pos, d_flat = d_rows.view({-1, hd});
  ops::embedding_backward(gpos, ix.pos, dx_rows, GradMode::overwrite);
  ops::embedding_backward(d_flat, ix.row, dx_rows, GradMode::accumulate);
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
  const PackIndex ix = pack_index(k, mine, block);
  compress(dist::block_of(rows, 0), k, mine, ix, block, w.k);
  compress(dist::block_of(rows, 1), v, mine, ix, block, w.v);
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
  const PackIndex ix = pack_index(k, mine, block);
  compress_backward(dist::block_of(dc, 0), k, mine, ix, block, w.k, grads.k, dk);
  compress_backward(dist::block_of(dc, 1), v, mine, ix, block, w.v, grads.v, dv);
}

}  // namespace lctx::mixers
