// Packed documents for the flash kernels (see DocRange in flash_params.h): per 64-row tile of
// the side a kernel's blocks own, the rows of the other side that share a document with it.
//  * flash_doc_order_kernel: unsorted[b] = 1 when the ids of row b decrease somewhere on
//    either side (then nothing can be skipped by range).
//  * flash_doc_range_kernel: one thread per (b, tile); with sorted ids the tile's documents are
//    [ids[first], ids[last]] and binary searches on the other side give the rows holding them.
#pragma once
#include "attn/flash_params.h"

namespace lctx::attn {

struct DocSide {
  const int32_t* ids;
  int64_t stride, len;  // batch stride, rows
};

__global__ void flash_doc_order_kernel(DocSide a, DocSide b, int64_t batch, int32_t* unsorted) {
  const int64_t n = a.len > b.len ? a.len : b.len;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < batch * n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / n, i = e % n;
    const bool down_a = i + 1 < a.len && a.ids[r * a.stride + i] > a.ids[r * a.stride + i + 1];
    const bool down_b = i + 1 < b.len && b.ids[r * b.stride + i] > b.ids[r * b.stride + i + 1];
    if (down_a || down_b) unsorted[r] = 1;
  }
}

// First row of `s` (sorted) whose id is >= x (upper = false) or > x (upper = true).
__device__ __forceinline__ int64_t doc_search(const DocSide& s, int64_t r, int32_t x, bool upper) {
  int64_t lo = 0, hi = s.len;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    const int32_t v = s.ids[r * s.stride + mid];
    if (upper ? v <= x : v < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// out[b * tiles + t] for the 64-row tiles of side `own` against side `other`.
__global__ void flash_doc_range_kernel(DocSide own, DocSide other, int64_t batch, int64_t tiles,
                                       const int32_t* unsorted, DocRange* out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= batch * tiles) return;
  const int64_t r = e / tiles, t = e % tiles;
  DocRange d{0, static_cast<int32_t>(other.len), 0, 0};
  if (!unsorted[r]) {
    const int64_t first = t * kDocTile, last = (first + kDocTile < own.len ? first + kDocTile : own.len) - 1;
    const int32_t lo_id = own.ids[r * own.stride + first], hi_id = own.ids[r * own.stride + last];
    d.lo = static_cast<int32_t>(doc_search(other, r, lo_id, false));
    d.hi = static_cast<int32_t>(doc_search(other, r, hi_id, true));
    if (lo_id == hi_id) d.full_lo = d.lo, d.full_hi = d.hi;
  }
  out[e] = d;
}

// The union of the rows tiles [t0, t1) of batch row b may see, and the intersection of their
// full rows, as [*lo, *hi) and [*flo, *fhi).
__device__ __forceinline__ void doc_rows(const FlashParams& p, int64_t b, int64_t t0, int64_t t1, int64_t* lo,
                                         int64_t* hi, int64_t* flo, int64_t* fhi) {
  int64_t l = INT64_MAX, h = 0, fl = 0, fh = INT64_MAX;
  for (int64_t t = t0; t < t1; ++t) {
    const DocRange d = p.doc_ranges[b * p.doc_tiles + t];
    l = min(l, int64_t(d.lo));
    h = max(h, int64_t(d.hi));
    fl = max(fl, int64_t(d.full_lo));
    fh = min(fh, int64_t(d.full_hi));
  }
  *lo = l;
  *hi = h;
  *flo = fl;
  *fhi = fh;
}

}  // namespace lctx::attn
