#include "mixers/block_means.h"

#include "dist/comm.h"
#include "dist/ring_kernels.h"  // block_of
#include "mixers/attention_parts.h"

namespace lctx::mixers {

namespace {

// Block pooling and its transpose on this rank's rows, CPU (f32/f64). rows [B, L, Hkv, hd] at
// global positions pos (local order), blocks [B, N, Hkv, hd], both contiguous and of one dtype:
//   to_blocks: blocks[:, c] += scale * rows[:, l]   for each local row l of block c = pos[l] / b < N
//   to_rows:   rows[:, l]   += scale * blocks[:, c]
enum class Pool { to_blocks, to_rows };

void pool_rows(const Tensor& rows, const Tensor& blocks, std::span<const int64_t> pos, int64_t b, double scale,
               Pool dir) {
  LCTX_CHECK(rows.device().is_cpu(), "block means: rows ", rows.str(),
             " are on a GPU; the block pooling runs on the CPU only so far");
  LCTX_CHECK(rows.is_contiguous() && blocks.is_contiguous() && rows.dtype() == blocks.dtype() &&
                 rows.size(0) == blocks.size(0) &&
                 rows.numel() / rows.size(0) / rows.size(1) == blocks.numel() / blocks.size(0) / blocks.size(1),
             "block means: pooling of rows ", rows.str(), " into blocks ", blocks.str(),
             " needs contiguous tensors of one dtype and row shape");
  LCTX_CHECK(static_cast<int64_t>(pos.size()) == rows.size(1), "block means: ", pos.size(), " positions for rows ",
             rows.str());
  const int64_t B = rows.size(0), L = rows.size(1), N = blocks.size(1), R = rows.numel() / (B * L);
  LCTX_DISPATCH_CPU_FLOAT(rows.dtype(), "block pooling", [&] {
    scalar_t* x = rows.data<scalar_t>();
    scalar_t* c = blocks.data<scalar_t>();
    const auto f = static_cast<scalar_t>(scale);
    for (int64_t bi = 0; bi < B; ++bi)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t blk = pos[static_cast<size_t>(l)] / b;
        if (blk >= N) continue;
        scalar_t* xr = x + (bi * L + l) * R;
        scalar_t* cr = c + (bi * N + blk) * R;
        if (dir == Pool::to_blocks)
          for (int64_t e = 0; e < R; ++e) cr[e] += f * xr[e];
        else
          for (int64_t e = 0; e < R; ++e) xr[e] += f * cr[e];
      }
  });
}

}  // namespace

BlockRows block_means_forward(dist::Comm& sp, const Tensor& k, const Tensor& v, std::span<const int64_t> positions,
                              int64_t block, int64_t blocks) {
  LCTX_CHECK(block >= 1 && blocks >= 0, "block means: block ", block, " and ", blocks, " blocks");
  const int64_t B = k.size(0), Hk = k.size(2), hd = k.size(3);
  const Tensor sums = Tensor::zeros({2, B, blocks, Hk, hd}, wide_dtype(k.dtype()), k.device());
  const double f = 1.0 / static_cast<double>(block);
  pool_rows(cast(k, sums.dtype()).contiguous(), dist::block_of(sums, 0), positions, block, f, Pool::to_blocks);
  pool_rows(cast(v, sums.dtype()).contiguous(), dist::block_of(sums, 1), positions, block, f, Pool::to_blocks);
  sp.all_reduce(sums, dist::ReduceOp::sum);
  return {cast(dist::block_of(sums, 0), k.dtype()), cast(dist::block_of(sums, 1), k.dtype())};
}

void block_means_backward(dist::Comm& sp, const Tensor& dc, std::span<const int64_t> positions, int64_t block,
                          const Tensor& dk, const Tensor& dv) {
  sp.all_reduce(dc, dist::ReduceOp::sum);
  const double f = 1.0 / static_cast<double>(block);
  pool_rows(dk, dist::block_of(dc, 0), positions, block, f, Pool::to_rows);
  pool_rows(dv, dist::block_of(dc, 1), positions, block, f, Pool::to_rows);
}

}  // namespace lctx::mixers
