// Exact softmax attention computed tile by tile with an online softmax (FlashAttention-2),
// returning the log-sum-exp so partial results over different key blocks can be merged
// exactly (ring attention). Layout [batch, seq, heads, head_dim]; Q has Hq heads, K/V have
// Hkv heads with Hq % Hkv == 0 (MHA, GQA, MQA).
//
// Masks are evaluated on *global* positions: query row i sits at q_offset + i, key column j
// at k_offset + j. Key j is visible from query i when all enabled rules allow it:
//   causal:          kpos <= qpos
//   sliding window:  qpos - window_left <= kpos <= qpos + window_right   (-1 = unbounded)
//   documents:       q_doc_ids[b, i] == k_doc_ids[b, j]
//   block mask:      block_mask->visible(i, j) (sparse patterns, block_mask.h; the only rule)
// Documents are fast when the ids are non-decreasing along each row (packed sequences): the
// CUDA kernels then visit only key tiles that share a document with the query tile and mask
// elements only at document edges. Other ids (e.g. interleaved documents) stay correct but
// every tile the position rules allow is computed and masked (the slow path).
// ALiBi adds -slope[h] * |qpos - kpos| to the score. A query row with no visible key gets
// output 0 and lse = -inf (never NaN), in forward and backward.
//
// Devices: the CPU reference takes f32 or f64 (any head_dim); CUDA takes bf16 or f16 with
// head_dim 64 or 128 (fp32 accumulation). With f64 inputs everything "f32" below is f64
// (lse, OutputDType::f32 outputs, accumulated gradients), so f64 tests stay exact.
// Tensors may be strided views (e.g. sequence slices) as long as head_dim is contiguous.
#pragma once
#include <cstdint>
#include <memory>
#include <string_view>

#include "attn/documents.h"
#include "core/grad_mode.h"
#include "core/tensor.h"

namespace lctx::attn {

class BlockMask;
enum class Mask { none, causal };
enum class OutputDType { input, f32 };     // f32: partial outputs for an exact fp32 merge
using lctx::GradMode;

// Which implementation runs a CUDA call: lctx's own kernels, cuDNN's fused attention, or
// automatic: cuDNN where it supports the call, lctx's kernels otherwise. cuDNN runs calls with
// bf16/f16 inputs whose rows (and lse, ALiBi slopes) are 16-byte aligned and whose
// causal/window band leaves every query row a key, at any q_offset/k_offset; with or without
// ALiBi (also non-causal, and on ring blocks: the bias uses the global distance). Document
// masks run on cuDNN only over a whole sequence (q_offset = k_offset = 0, Sq = Sk = the
// seq_len of FlashOptions::documents, one cuDNN sequence per document), and `automatic` keeps
// documents averaging fewer than 48 tokens on lctx's kernels, which run those faster.
// `automatic` follows the environment variable LCTX_ATTN_BACKEND (auto|cudnn|lctx) when it is
// set. A forced `cudnn` that cannot run a call is an error naming the reason. The first use of
// each backend (and each reason for falling back) is reported once on stderr. CPU tensors
// always run the reference (a forced `cudnn` on the CPU is an error).
enum class AttnBackend { automatic, cudnn, lctx };
std::string_view attn_backend_name(AttnBackend b);    // "auto", "cudnn", "lctx"
AttnBackend parse_attn_backend(std::string_view name);  // throws naming the accepted values

struct FlashOptions {
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(head_dim)
  Mask mask = Mask::none;
  int64_t window_left = -1;    // -1: unbounded
  int64_t window_right = -1;   // -1: unbounded
  int64_t q_offset = 0;        // global position of query row 0
  int64_t k_offset = 0;        // global position of key row 0
  Tensor alibi_slopes;         // f32 [Hq] or undefined
  Tensor q_doc_ids;            // i32 [B, Sq] or undefined (one document)
  Tensor k_doc_ids;            // i32 [B, Sk]; defined iff q_doc_ids is
  // Optional host description of the documents the ids index (Documents::ids of the global
  // sequence, sharded by the layout): ring attention then skips blocks that share no
  // document, and a whole-sequence call can run on cuDNN (one ragged sequence per document).
  // Ids that do not match it give wrong results; without it the ring skips nothing and cuDNN
  // takes no documents (lctx's kernels still skip tiles by the ids).
  std::shared_ptr<const Documents> documents;
  // Sparse attention (block_mask.h): the kernels visit only the mask's listed tiles and mask
  // only its partial ones. The whole rule of the call: needs Sq = Sk = its seq_len, no
  // offsets, Mask::none, no window, documents or ALiBi; runs on lctx's kernels (never cuDNN),
  // except a plain window pattern, which is the window rule above and runs as one (band tiles,
  // cuDNN where it can).
  std::shared_ptr<const BlockMask> block_mask;
  // i64 [1] on the call's device, or undefined: lctx's CUDA kernels add the (query tile, key
  // tile) pairs they compute (backward: per query head) so tests and benchmarks see skipping.
  Tensor tile_counter;
  OutputDType out_dtype = OutputDType::input;  // forward only
  AttnBackend backend = AttnBackend::automatic;
};

struct FlashOutput {
  Tensor o;    // [B, Sq, Hq, D], dtype of q (or f32 with OutputDType::f32)
  Tensor lse;  // f32 [B, Hq, Sq], natural log, -inf for fully masked rows
};

struct FlashGrads {
  Tensor dq;  // [B, Sq, Hq, D]
  Tensor dk;  // [B, Sk, Hkv, D], summed over the query heads of each KV group
  Tensor dv;  // [B, Sk, Hkv, D]
};

FlashOutput flash_forward(const Tensor& q, const Tensor& k, const Tensor& v, const FlashOptions& opts,
                          Stream s = {});

// o and lse may be the *global* merged output and LSE of a larger attention (ring backward):
// the gradient is then this key block's contribution. With GradMode::overwrite new tensors
// (dtype of q) are returned, or written into those of `into` that are defined (dtype of q
// or f32); with GradMode::accumulate the gradients are added into the caller's fp32 tensors
// in `into` (same shapes), which are also returned. CUDA: asynchronous on `s`; its fp32 dq
// scratch is stream-ordered memory freed after its kernels, so the host never waits.
FlashGrads flash_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                          const Tensor& dout, const FlashOptions& opts, GradMode mode = GradMode::overwrite,
                          FlashGrads into = {}, Stream s = {});

}  // namespace lctx::attn
