// Host/device contract of flash attention: raw pointers, element strides, shapes and mask
// options in one plain struct. flash_params.cpp validates a call's tensors and builds it;
// flash.cpp hands it to the CPU reference (flash_reference.cpp), to cuDNN (flash_cudnn.cpp) or
// to the CUDA launch site (flash.cu). The position rules below are shared by all of them so
// that the CPU and the GPU mask exactly the same keys.
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/device.h"
#include "core/dtype.h"
#include "core/grad_mode.h"
#include "attn/sparse_pattern.h"
#include "core/strided.h"  // LCTX_HD

namespace lctx {
class Tensor;
}

namespace lctx::attn {

struct FlashOptions;
class BlockMask;
struct FlashOutput;
struct FlashGrads;

// Packed documents on the GPU (flash_docs.cuh): before the kernels, each 64-row tile of one
// side (queries for the forward, keys for the backward) gets the rows of the other side that
// share a document with it, [lo, hi), and the rows [full_lo, full_hi) that lie in the one
// document of every row of the tile (empty when the tile spans several documents). The kernels
// visit only [lo, hi) and drop the document mask on tiles inside [full_lo, full_hi). This
// needs ids non-decreasing along each row of both sides (packed sequences); a row whose ids
// are not gets [0, other side's length) and no full rows: correct, but every tile masked.
constexpr int kDocTile = 64;
struct DocRange {
  int32_t lo, hi, full_lo, full_hi;
};

struct FlashParams {
  // Shapes: q/o/dq/dout [B, Sq, Hq, D], k/v/dk/dv [B, Sk, Hkv, D], lse [B, Hq, Sq].
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0;
  int heads_q = 0, heads_kv = 0, head_dim = 0;
  DType dtype = DType::f32;  // q, k, v, dout

  // Tensors [B, S, H, D] with a contiguous last dim; strides in elements (b, s, h).
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_stride[3] = {}, k_stride[3] = {}, v_stride[3] = {};

  // Forward output (written) or the given (possibly global) output in backward (read).
  void* o = nullptr;
  DType o_dtype = DType::f32;
  int64_t o_stride[3] = {};
  void* lse = nullptr;  // [B, Hq, Sq], sequence stride 1
  DType lse_dtype = DType::f32;
  int64_t lse_stride[2] = {};  // (b, h)

  // Masks on global positions qpos = q_offset + i, kpos = k_offset + j.
  double softmax_scale = 1.0;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;  // -1: unbounded
  int64_t q_offset = 0, k_offset = 0;
  const float* alibi_slopes = nullptr;   // [Hq]
  const int32_t* q_doc_ids = nullptr;    // [B, Sq], sequence stride 1
  const int32_t* k_doc_ids = nullptr;    // [B, Sk], sequence stride 1
  int64_t q_doc_stride = 0, k_doc_stride = 0;  // batch strides
  // Set by the CUDA launch site for calls with documents: per (b, 64-row tile) of the side the
  // kernel's blocks own (flash_docs.cuh), doc_tiles tiles per batch row.
  const DocRange* doc_ranges = nullptr;
  int64_t doc_tiles = 0;
  unsigned long long* tile_counter = nullptr;  // FlashOptions::tile_counter
  // Block mask (block_mask.h): the element rule (sparse_visible; random bits on the call's
  // device) and, set by the CUDA launch site, per tile of the side the kernel's blocks own the
  // tiles of the other side, entries[offsets[t] .. offsets[t + 1]) = tile << 1 | partial.
  const BlockMask* block_mask = nullptr;  // host object, for the launch site
  SparsePattern sparse;
  const int32_t* sparse_offsets = nullptr;
  const int32_t* sparse_entries = nullptr;

  // Backward only.
  const void* dout = nullptr;
  int64_t dout_stride[3] = {};
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  DType grad_dtype = DType::f32;
  int64_t dq_stride[3] = {}, dk_stride[3] = {}, dv_stride[3] = {};
  bool accumulate = false;  // add into dq/dk/dv instead of overwriting them

  LCTX_HD int group() const { return heads_q / heads_kv; }
  LCTX_HD bool has_alibi() const { return alibi_slopes != nullptr; }
  LCTX_HD bool has_docs() const { return q_doc_ids != nullptr; }
  LCTX_HD bool has_sparse() const { return sparse.enabled(); }
};

// Rows of a [B, S, H, D] tensor start 16-byte aligned: the pointer, and the b/s/h strides in
// multiples of 8 (16-bit) elements. lctx's cp.async loads and cuDNN's kernels both need it.
inline bool flash_rows_aligned(const void* ptr, const int64_t (&stride)[3]) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && stride[0] % 8 == 0 && stride[1] % 8 == 0 &&
         stride[2] % 8 == 0;
}

// Position rules (causal, window) for one query/key pair of global positions.
LCTX_HD inline bool flash_pos_visible(const FlashParams& p, int64_t qpos, int64_t kpos) {
  if (p.causal && kpos > qpos) return false;
  if (p.window_left >= 0 && kpos < qpos - p.window_left) return false;
  if (p.window_right >= 0 && kpos > qpos + p.window_right) return false;
  return true;
}

// Local key rows [*lo, *hi) that the position rules may show to some query in local rows
// [q_lo, q_hi); keys outside are masked for every such query (block skipping).
LCTX_HD inline void flash_key_range(const FlashParams& p, int64_t q_lo, int64_t q_hi, int64_t* lo, int64_t* hi) {
  int64_t l = 0, h = p.seqlen_k;
  const int64_t qmin = p.q_offset + q_lo, qmax = p.q_offset + q_hi - 1;
  if (p.causal && qmax - p.k_offset + 1 < h) h = qmax - p.k_offset + 1;
  if (p.window_right >= 0 && qmax + p.window_right - p.k_offset + 1 < h) h = qmax + p.window_right - p.k_offset + 1;
  if (p.window_left >= 0 && qmin - p.window_left - p.k_offset > l) l = qmin - p.window_left - p.k_offset;
  if (h < l) h = l;
  *lo = l;
  *hi = h;
}

// Local query rows [*lo, *hi) that may see some key in local rows [k_lo, k_hi).
LCTX_HD inline void flash_query_range(const FlashParams& p, int64_t k_lo, int64_t k_hi, int64_t* lo, int64_t* hi) {
  int64_t l = 0, h = p.seqlen_q;
  const int64_t kmin = p.k_offset + k_lo, kmax = p.k_offset + k_hi - 1;
  if (p.causal && kmin - p.q_offset > l) l = kmin - p.q_offset;
  if (p.window_right >= 0 && kmin - p.window_right - p.q_offset > l) l = kmin - p.window_right - p.q_offset;
  if (p.window_left >= 0 && kmax + p.window_left - p.q_offset + 1 < h) h = kmax + p.window_left - p.q_offset + 1;
  if (h < l) h = l;
  *lo = l;
  *hi = h;
}

// True when the position rules (causal, window) show every pair of the tile [q_lo, q_hi) x
// [k_lo, k_hi), all in range: no per-element position mask (documents and ALiBi aside).
LCTX_HD inline bool flash_tile_in_band(const FlashParams& p, int64_t q_lo, int64_t q_hi, int64_t k_lo, int64_t k_hi) {
  if (q_hi > p.seqlen_q || k_hi > p.seqlen_k) return false;
  const int64_t qmin = p.q_offset + q_lo, qmax = p.q_offset + q_hi - 1;
  const int64_t kmin = p.k_offset + k_lo, kmax = p.k_offset + k_hi - 1;
  if (p.causal && kmax > qmin) return false;
  if (p.window_left >= 0 && kmin < qmax - p.window_left) return false;
  if (p.window_right >= 0 && kmax > qmin + p.window_right) return false;
  return true;
}

// True when the tile needs no per-element work at all: in the band, no ALiBi, no documents, no
// block mask (whose full tiles the kernels take from its lists).
LCTX_HD inline bool flash_tile_unmasked(const FlashParams& p, int64_t q_lo, int64_t q_hi, int64_t k_lo, int64_t k_hi) {
  return !p.alibi_slopes && !p.q_doc_ids && !p.has_sparse() && flash_tile_in_band(p, q_lo, q_hi, k_lo, k_hi);
}

// Key tiles n in [*lo, *hi) (tile n = local keys [n * bn, n * bn + bn)) for which
// flash_tile_in_band(p, q_lo, q_hi, n * bn, n * bn + bn) holds: the rules bound n on each
// side, so they form one interval, computed once per block instead of tested per tile.
LCTX_HD inline void flash_band_tiles(const FlashParams& p, int64_t q_lo, int64_t q_hi, int64_t bn, int64_t* lo,
                                     int64_t* hi) {
  auto floor_div = [](int64_t a, int64_t d) { return a >= 0 ? a / d : -((-a + d - 1) / d); };
  int64_t l = 0, h = p.seqlen_k / bn;  // whole tiles inside [0, seqlen_k)
  if (q_hi > p.seqlen_q) h = 0;
  const int64_t qmin = p.q_offset + q_lo, qmax = p.q_offset + q_hi - 1;
  // causal: kmax = k_offset + n bn + bn - 1 <= qmin; window_right: kmax <= qmin + wr
  if (p.causal) h = std::min(h, floor_div(qmin - p.k_offset + 1, bn));
  if (p.window_right >= 0) h = std::min(h, floor_div(qmin + p.window_right - p.k_offset + 1, bn));
  // window_left: kmin = k_offset + n bn >= qmax - wl
  if (p.window_left >= 0) l = std::max(l, -floor_div(-(qmax - p.window_left - p.k_offset), bn));
  *lo = l;
  *hi = std::max(h, l);
}


// Validates q/k/v, the options and, for the backward, o, lse, dout and the gradients of a call
// (flash_params.cpp), and builds its params. The forward allocates *out (o in q's dtype or
// wide_dtype per opts.out_dtype, lse in wide_dtype); the backward allocates the undefined
// members of *g (q's dtype) and checks the defined ones against `mode`.
FlashParams flash_forward_params(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const FlashOptions& opts, FlashOutput* out);
FlashParams flash_backward_params(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& dout, const FlashOptions& opts, GradMode mode,
                                  FlashGrads* g);
// Points p at another o (pointer, dtype, strides) / other gradient tensors (grad_dtype from dq).
void flash_set_o(FlashParams& p, const Tensor& o);
void flash_set_grads(FlashParams& p, const FlashGrads& g);

// CPU reference (flash_reference.cpp): f32/f64 inputs, any head_dim.
void flash_forward_cpu(const FlashParams& p);
void flash_backward_cpu(const FlashParams& p);

#ifdef LCTX_HAVE_CUDA
// CUDA launch site (flash.cu); params validated by flash_params.cpp. bf16/f16 inputs, D in {64, 128}.
void flash_forward_cuda(const FlashParams& p, Stream s);
// Stream-ordered: takes its fp32 scratch from a pool on `s` and never blocks the host.
void flash_backward_cuda(const FlashParams& p, Stream s);
// Scratch memory ordered on `s` (flash.cu): usable by work queued on `s` after the alloc,
// returned to the pool once the work queued before the free is done. No host sync.
void* flash_scratch_alloc(int64_t bytes, Stream s);
void flash_scratch_free(void* ptr, Stream s);
#endif

}  // namespace lctx::attn
