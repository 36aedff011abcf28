// Block-select attention's CUDA gather and scatter (block_select.h, detail): the listed key
// blocks of one (batch row, KV head) copied into dense flash keys with their document ids, and
// the gathered rows' gradients summed back per key block in a fixed order (no atomics). The
// CPU loops they mirror are in block_select.cpp.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "attn/block_select.h"
#include "core/cuda/launch.cuh"
#include "core/cuda_check.h"
#include "core/cuda_types.cuh"

namespace lctx::attn::detail {

namespace {

struct GatherArgs {
  const char* k;
  const char* v;
  int64_t k_stride[3], v_stride[3];  // bytes (b, s, h)
  const int32_t* lists;              // [E, n]
  int64_t entries, n, k_block, b, h;
  int64_t row_bytes;                 // D x element size
  char* k_rows;
  char* v_rows;
  int32_t* ids;
};

// One thread per chunk of V bytes of a gathered row (V = 16 when every row is 16-byte aligned).
template <class V>
__global__ void gather_kernel(GatherArgs a) {
  const int64_t chunks = a.row_bytes / static_cast<int64_t>(sizeof(V)), rows = a.entries * a.n * a.k_block;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * chunks;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / chunks, c = i % chunks, slot = row / a.k_block, r = row % a.k_block;
    const int32_t blk = a.lists[slot];
    V kv{}, vv{};
    if (blk >= 0) {
      const int64_t pos = blk * a.k_block + r;
      kv = reinterpret_cast<const V*>(a.k + a.b * a.k_stride[0] + pos * a.k_stride[1] + a.h * a.k_stride[2])[c];
      vv = reinterpret_cast<const V*>(a.v + a.b * a.v_stride[0] + pos * a.v_stride[1] + a.h * a.v_stride[2])[c];
    }
    reinterpret_cast<V*>(a.k_rows + row * a.row_bytes)[c] = kv;
    reinterpret_cast<V*>(a.v_rows + row * a.row_bytes)[c] = vv;
    if (c == 0) a.ids[row] = blk >= 0 ? 0 : 1;
  }
}

struct ScatterArgs {
  const float* dk_rows;
  const float* dv_rows;
  const int32_t *targets, *offsets, *sources;
  int64_t n, k_block, D, Sk, Hkv, b, h;
  float* dk;
  float* dv;
};

// Block (u, y): key block targets[u], elements (r, d) of its k_block x D from y x blockDim.
__global__ void scatter_kernel(ScatterArgs a) {
  const int64_t u = blockIdx.x, block_elems = a.k_block * a.D;
  const int32_t lo = a.offsets[u], hi = a.offsets[u + 1];
  const int64_t t = a.targets[u];
  for (int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; i < block_elems; i += int64_t(gridDim.y) * blockDim.x) {
    const int64_t r = i / a.D, c = i % a.D;
    float sk = 0.f, sv = 0.f;
    for (int32_t j = lo; j < hi; ++j) {
      const int64_t src = a.sources[j], e = src / a.n, slot = src % a.n;
      const int64_t in = ((e * a.n + slot) * a.k_block + r) * a.D + c;
      sk += a.dk_rows[in];
      sv += a.dv_rows[in];
    }
    const int64_t out = ((a.b * a.Sk + t * a.k_block + r) * a.Hkv + a.h) * a.D + c;
    a.dk[out] += sk;
    a.dv[out] += sv;
  }
}

}  // namespace

void block_rows_gather_cuda(const Tensor& k_in, const Tensor& v_in, const Tensor& lists, int64_t b, int64_t h,
                            int64_t k_block, Tensor& k_rows, Tensor& v_rows, Tensor& ids, Stream s) {
  set_device(k_in);
  // The kernel reads whole rows: a head dim with a stride is made contiguous first.
  const auto dense_rows = [&](const Tensor& x) { return x.strides()[3] == 1 ? x : x.contiguous(s); };
  const Tensor k = dense_rows(k_in), v = dense_rows(v_in);
  const int64_t es = static_cast<int64_t>(dtype_size(k.dtype()));
  GatherArgs a{};
  a.k = static_cast<const char*>(k.raw());
  a.v = static_cast<const char*>(v.raw());
  for (int i = 0; i < 3; ++i) {
    a.k_stride[i] = k.strides()[static_cast<size_t>(i)] * es;
    a.v_stride[i] = v.strides()[static_cast<size_t>(i)] * es;
  }
  a.lists = lists.data<int32_t>();
  a.entries = lists.size(0);
  a.n = lists.size(1);
  a.k_block = k_block;
  a.b = b;
  a.h = h;
  a.row_bytes = k.size(3) * es;
  a.k_rows = static_cast<char*>(k_rows.raw());
  a.v_rows = static_cast<char*>(v_rows.raw());
  a.ids = ids.data<int32_t>();
  const int64_t rows = a.entries * a.n * k_block;
  if (rows == 0) return;
  bool aligned = a.row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(a.k) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(a.v) % 16 == 0;
  for (int i = 0; i < 3; ++i) aligned = aligned && a.k_stride[i] % 16 == 0 && a.v_stride[i] % 16 == 0;
  if (aligned) {
    gather_kernel<uint4><<<grid_size(rows * (a.row_bytes / 16), 256), 256, 0, cuda_stream(s)>>>(a);
  } else {
    LCTX_CHECK(a.row_bytes % es == 0, "block_select: row of ", a.row_bytes, " bytes");
    if (es == 2)
      gather_kernel<uint16_t><<<grid_size(rows * (a.row_bytes / 2), 256), 256, 0, cuda_stream(s)>>>(a);
    else
      gather_kernel<uint32_t><<<grid_size(rows * (a.row_bytes / 4), 256), 256, 0, cuda_stream(s)>>>(a);
  }
  LCTX_CUDA_CHECK_LAUNCH("block_select gather_kernel");
}

void block_rows_scatter_cuda(const Tensor& dk_rows, const Tensor& dv_rows, const Tensor& targets,
                             const Tensor& offsets, const Tensor& sources, int64_t b, int64_t h, int64_t k_block,
                             Tensor& dk, Tensor& dv, Stream s) {
  LCTX_CHECK(dk.dtype() == DType::f32 && dk_rows.dtype() == DType::f32, "block_select_backward: CUDA gradients ",
             dk.str(), " and ", dk_rows.str(), " must be f32");
  set_device(dk);
  ScatterArgs a{};
  a.dk_rows = dk_rows.data<float>();
  a.dv_rows = dv_rows.data<float>();
  a.targets = targets.data<int32_t>();
  a.offsets = offsets.data<int32_t>();
  a.sources = sources.data<int32_t>();
  a.D = dk.size(3);
  a.n = dk_rows.size(1) / k_block;
  a.k_block = k_block;
  a.Sk = dk.size(1);
  a.Hkv = dk.size(2);
  a.b = b;
  a.h = h;
  a.dk = dk.data<float>();
  a.dv = dv.data<float>();
  const int64_t u = targets.numel();
  if (u == 0) return;
  const int threads = 256;
  const dim3 grid(static_cast<unsigned>(u),
                  static_cast<unsigned>(std::min<int64_t>((k_block * a.D + threads - 1) / threads, 64)));
  scatter_kernel<<<grid, threads, 0, cuda_stream(s)>>>(a);
  LCTX_CUDA_CHECK_LAUNCH("block_select scatter_kernel");
}

}  // namespace lctx::attn::detail
