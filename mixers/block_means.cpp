#include "mixers/block_means.h"

#include <vector>

#include "dist/comm.h"
#include "dist/ring_kernels.h"  // block_of
#include "mixers/attention_parts.h"  // cast

namespace lctx::mixers {

namespace {

// rows [B, L, Hkv, hd] as [B, L, Hkv hd] (contiguous views).
Tensor flat(const Tensor& t) { return t.view({t.size(0), t.size(1), t.numel() / (t.size(0) * t.size(1))}); }

}  // namespace

ops::RowBuckets block_rows_index(std::span<const int64_t> positions, int64_t block, int64_t blocks, Device dev) {
  LCTX_CHECK(block >= 1 && blocks >= 0, "block means: block ", block, " and ", blocks, " blocks");
  std::vector<int64_t> of(positions.size());
  for (size_t l = 0; l < positions.size(); ++l) of[l] = positions[l] / block < blocks ? positions[l] / block : -1;
  return ops::row_buckets(of, blocks, dev);
}

BlockRows block_means_forward(dist::Comm& sp, const Tensor& k, const Tensor& v, const ops::RowBuckets& ix,
                              int64_t block) {
  const int64_t B = k.size(0), blocks = ix.offsets.numel() - 1, Hk = k.size(2), hd = k.size(3);
  const Tensor sums = Tensor::zeros({2, B, blocks, Hk, hd}, wide_dtype(k.dtype()), k.device());
  const double f = 1.0 / static_cast<double>(block);
  for (int i = 0; i < 2; ++i) {
    Tensor pooled = flat(dist::block_of(sums, i));
    ops::row_pool_forward(pooled, flat(cast(i == 0 ? k : v, sums.dtype()).contiguous()), ix, f);
  }
  sp.all_reduce(sums, dist::ReduceOp::sum);
  return {cast(dist::block_of(sums, 0), k.dtype()), cast(dist::block_of(sums, 1), k.dtype())};
}

void block_means_backward(dist::Comm& sp, const Tensor& dc, const ops::RowBuckets& ix, int64_t block, const Tensor& dk,
                          const Tensor& dv) {
  sp.all_reduce(dc, dist::ReduceOp::sum);
  const double f = 1.0 / static_cast<double>(block);
  for (int i = 0; i < 2; ++i) {
    Tensor rows = flat(i == 0 ? dk : dv);
    ops::row_pool_backward(rows, flat(dist::block_of(dc, i)), ix, f);
  }
}

}  // namespace lctx::mixers
