// Flash attention CUDA launch site: checks what the kernels need beyond flash.cpp's
// validation (16-byte aligned rows for cp.async), builds the document ranges of packed
// sequences (flash_docs.cuh) or takes a block mask's device tile lists (block_mask.h), then dispatches dtype x head_dim to the templates. Masks, windows, ALiBi, documents and offsets are runtime branches inside the
// kernels, so there are 4 forward and 4 backward instantiations in all.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "attn/block_mask.h"
#include "attn/flash_bwd_kernel.cuh"
#include "attn/flash_docs.cuh"
#include "attn/flash_fwd_kernel.cuh"
#include "attn/flash_params.h"
#include "core/allocator.h"
#include "core/cuda/fast_math.cuh"
#include "core/cuda_check.h"
#include "core/cuda_types.cuh"

namespace lctx::attn {
namespace {

void check_rows_aligned(const char* op, const char* name, const void* ptr, const int64_t (&stride)[3]) {
  LCTX_CHECK(flash_rows_aligned(ptr, stride), op, ": CUDA needs ", name, " rows 16-byte aligned (pointer and b/s/h strides multiples of 8 elements)");
}

template <class T, class F>
void with_head_dim(int d, F&& f) {
  if (d == 64) f.template operator()<T, 64>();
  else f.template operator()<T, 128>();
}

template <class F>
void dispatch(const FlashParams& p, F&& f) {
  if (p.dtype == DType::bf16) with_head_dim<__nv_bfloat16>(p.head_dim, f);
  else with_head_dim<__half>(p.head_dim, f);
}

float scale_log2(const FlashParams& p) { return static_cast<float>(p.softmax_scale) * kLog2e; }

}  // namespace

// Scratch (the backward's fp32 dQ partial sums, Dsum, lse2; cuDNN's workspace; document
// ranges) is stream-ordered memory from the allocator: freed only after the kernels that use
// it, with no host synchronization (ring attention overlaps streams).
void* flash_scratch_alloc(int64_t bytes, Stream s) {
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  return allocate_async(static_cast<size_t>(bytes), Device::cuda(dev), s);
}

void flash_scratch_free(void* ptr, Stream s) {
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  deallocate_async(ptr, Device::cuda(dev), s);
}

namespace {

// For a call with documents: p.doc_ranges of the 64-row tiles of the queries (forward,
// by_query) or of the keys (backward), in stream-ordered scratch the caller frees.
void* set_doc_ranges(FlashParams& p, bool by_query, Stream s) {
  if (!p.has_docs()) return nullptr;
  const DocSide q{p.q_doc_ids, p.q_doc_stride, p.seqlen_q}, k{p.k_doc_ids, p.k_doc_stride, p.seqlen_k};
  const DocSide& own = by_query ? q : k;
  const int64_t tiles = (own.len + kDocTile - 1) / kDocTile;
  const cudaStream_t stream = cuda_stream(s);
  void* scratch = flash_scratch_alloc(static_cast<int64_t>(sizeof(DocRange)) * p.batch * tiles + 4 * p.batch, s);
  DocRange* ranges = static_cast<DocRange*>(scratch);
  int32_t* unsorted = reinterpret_cast<int32_t*>(ranges + p.batch * tiles);
  LCTX_CUDA_CHECK(cudaMemsetAsync(unsorted, 0, 4 * p.batch, stream));
  const int64_t n = p.batch * std::max(p.seqlen_q, p.seqlen_k);
  flash_doc_order_kernel<<<static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 1024)), 256, 0, stream>>>(
      q, k, p.batch, unsorted);
  LCTX_CUDA_CHECK_LAUNCH("flash_doc_order_kernel");
  flash_doc_range_kernel<<<static_cast<unsigned>((p.batch * tiles + 127) / 128), 128, 0, stream>>>(
      own, by_query ? k : q, p.batch, tiles, unsorted, ranges);
  LCTX_CUDA_CHECK_LAUNCH("flash_doc_range_kernel");
  p.doc_ranges = ranges;
  p.doc_tiles = tiles;
  return scratch;
}

// For a call with a block mask: its lists for the kernel's tiles (the side the blocks own:
// queries for the forward, keys for the backward) and the rule with device random bits.
// Uploaded once per mask, tile shape and device (block_mask.h).
void set_block_lists(FlashParams& p, int64_t q_tile, int64_t k_tile, TileOrder order, Stream s) {
  if (!p.block_mask) return;
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  const DeviceBlockMask d = p.block_mask->device(q_tile, k_tile, order, Device::cuda(dev), s);
  p.sparse_offsets = d.offsets;
  p.sparse_entries = d.entries;
  p.sparse = d.pattern;
}

}  // namespace

void flash_forward_cuda(const FlashParams& params, Stream s) {
  FlashParams p = params;
  check_rows_aligned("flash_forward", "q", p.q, p.q_stride);
  check_rows_aligned("flash_forward", "k", p.k, p.k_stride);
  check_rows_aligned("flash_forward", "v", p.v, p.v_stride);
  void* doc_scratch = set_doc_ranges(p, true, s);
  dispatch(p, [&]<class T, int D>() {
    using Tr = FlashFwdTraits<T, D>;
    set_block_lists(p, Tr::kBlockM, Tr::kBlockN, TileOrder::by_query, s);
    auto kernel = p.has_alibi() ? flash_fwd_kernel<Tr, T, true> : flash_fwd_kernel<Tr, T, false>;
    LCTX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
    const dim3 grid(static_cast<unsigned>((p.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM), p.heads_q,
                    static_cast<unsigned>(p.batch));
    kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, cuda_stream(s)>>>(p, scale_log2(p));
    LCTX_CUDA_CHECK_LAUNCH("flash_fwd_kernel");
  });
  if (doc_scratch) flash_scratch_free(doc_scratch, s);
}

void flash_backward_cuda(const FlashParams& params, Stream s) {
  FlashParams p = params;
  check_rows_aligned("flash_backward", "q", p.q, p.q_stride);
  check_rows_aligned("flash_backward", "k", p.k, p.k_stride);
  check_rows_aligned("flash_backward", "v", p.v, p.v_stride);
  check_rows_aligned("flash_backward", "dout", p.dout, p.dout_stride);
  const cudaStream_t stream = cuda_stream(s);
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q;
  void* doc_scratch = set_doc_ranges(p, false, s);
  dispatch(p, [&]<class T, int D>() {
    using Tr = FlashBwdTraits<T, D>;
    set_block_lists(p, Tr::kBlockM, Tr::kBlockN, TileOrder::by_key, s);
    const int64_t q_tiles = (p.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM;
    const int64_t acc_elems = p.batch * p.heads_q * q_tiles * Tr::kBlockM * D;
    const int64_t prows = p.batch * p.heads_q * q_tiles * Tr::kBlockM;  // rows padded to whole tiles
    float* scratch = static_cast<float*>(flash_scratch_alloc(sizeof(float) * (acc_elems + 2 * prows), s));
    float* dq_acc = scratch;
    float* dsum = scratch + acc_elems;
    float* lse2 = dsum + prows;
    LCTX_CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, sizeof(float) * acc_elems, stream));
    const unsigned dot_blocks = static_cast<unsigned>((prows * 32 + 255) / 256);
    const int64_t q_pad = q_tiles * Tr::kBlockM;
    if (rows > 0) {
      if (p.o_dtype == DType::f32) flash_bwd_dot_kernel<T, float><<<dot_blocks, 256, 0, stream>>>(p, dsum, lse2, q_pad);
      else flash_bwd_dot_kernel<T, T><<<dot_blocks, 256, 0, stream>>>(p, dsum, lse2, q_pad);
      LCTX_CUDA_CHECK_LAUNCH("flash_bwd_dot_kernel");
    }
    auto kernel = p.has_alibi() ? flash_bwd_kernel<Tr, T, true> : flash_bwd_kernel<Tr, T, false>;
    LCTX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
    const dim3 grid(static_cast<unsigned>((p.seqlen_k + Tr::kBlockN - 1) / Tr::kBlockN), p.heads_kv,
                    static_cast<unsigned>(p.batch));
    if (p.seqlen_k > 0) {
      kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p, scale_log2(p), dsum, lse2, dq_acc);
      LCTX_CUDA_CHECK_LAUNCH("flash_bwd_kernel");
    }
    if (rows > 0) {
      flash_bwd_dq_kernel<Tr, T><<<2048, 256, 0, stream>>>(p, dq_acc, static_cast<float>(p.softmax_scale));
      LCTX_CUDA_CHECK_LAUNCH("flash_bwd_dq_kernel");
    }
    flash_scratch_free(scratch, s);
  });
  if (doc_scratch) flash_scratch_free(doc_scratch, s);
}

}  // namespace lctx::attn
