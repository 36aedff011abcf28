// cuDNN's fused scaled-dot-product attention as the second CUDA backend of flash_forward /
// flash_backward, built with the cuDNN graph (backend) API. It takes the same FlashParams as
// lctx's kernels: the forward also writes the softmax statistics (= lse), the backward takes
// the given (possibly global, ring-merged) o and lse, so ring attention merges and
// differentiates cuDNN blocks exactly like lctx's. Masks map to cuDNN's diagonal band (causal
// and sliding window at any query/key offset) and ALiBi to pointwise ops on the scores (the
// global distance at any offset; -slope * |d| where keys may follow the query). Documents of a
// whole sequence (FlashOptions::documents, no offsets) run as cuDNN ragged sequences, one per
// document; document masks on ring blocks stay with lctx's kernels. Execution plans are built
// once per thread, device, shape and document bucket, and cached.
#pragma once
#ifdef LCTX_HAVE_CUDA
#include <string>

#include "attn/documents.h"
#include "attn/flash_params.h"
#include "core/tensor.h"

namespace lctx::attn::detail {

// Why cuDNN cannot run this call, as far as it can be told before building a plan (empty when
// it can): document masks without `docs` (FlashOptions::documents, which the ids must match)
// or on part of the sequence, a query row with no visible key, unaligned rows or ALiBi slopes.
std::string cudnn_unsupported(const FlashParams& p, const Documents* docs);

// Why lctx's kernels run this call faster although cuDNN can run it (empty when they do not),
// for the automatic backend: documents averaging fewer than kCudnnMinMeanDocument tokens. cuDNN
// spends a tile per document and head, lctx's 64-row tiles span several documents; measured on
// H200 (causal, S = 64k, H = 16, D = 128, fwd+bwd): cuDNN 1.3x faster at a 69-token mean,
// 3.1x slower at 15; the cost model from both puts the crossover near 45.
constexpr int64_t kCudnnMinMeanDocument = 48;
std::string cudnn_slower(const FlashParams& p, const Documents* docs);

// Run on `s`. o (forward) and dq/dk/dv (backward) are written in p.dtype at their strides
// (p.accumulate is ignored: the caller accumulates). Returns false, with the reason in
// *why, when no cuDNN engine accepts the graph (remembered per shape: later calls fail fast).
// With documents, their lengths and offsets are copied to the device on `s` from pinned memory.
bool flash_forward_cudnn(const FlashParams& p, const Documents* docs, Stream s, std::string* why);
bool flash_backward_cudnn(const FlashParams& p, const Documents* docs, Stream s, std::string* why);

std::string cudnn_version_string();  // e.g. "9.14.0"

}  // namespace lctx::attn::detail
#endif
