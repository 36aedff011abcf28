// cuDNN's fused scaled-dot-product attention as the second CUDA backend of flash_forward /
// flash_backward, built with the cuDNN graph (backend) API. It takes the same FlashParams as
// lctx's kernels: the forward also writes the softmax statistics (= lse), the backward takes
// the given (possibly global, ring-merged) o and lse, so ring attention merges and
// differentiates cuDNN blocks exactly like lctx's. Masks map to cuDNN's diagonal band (causal
// and sliding window at any query/key offset); ALiBi and documents stay with lctx's kernels.
// Execution plans are built once per thread, device and shape, and cached.
#pragma once
#ifdef LCTX_HAVE_CUDA
#include <string>

#include "attn/flash_params.h"
#include "core/tensor.h"

namespace lctx::attn::detail {

// Why cuDNN cannot run this call, as far as it can be told before building a plan (empty when
// it can): ALiBi, documents, a query row with no visible key, unaligned rows.
std::string cudnn_unsupported(const FlashParams& p);

// Run on `s`. o (forward) and dq/dk/dv (backward) are written in p.dtype at their strides
// (p.accumulate is ignored: the caller accumulates). Returns false, with the reason in
// *why, when no cuDNN engine accepts the graph (remembered per shape: later calls fail fast).
bool flash_forward_cudnn(const FlashParams& p, Stream s, std::string* why);
bool flash_backward_cudnn(const FlashParams& p, Stream s, std::string* why);

std::string cudnn_version_string();  // e.g. "9.14.0"

}  // namespace lctx::attn::detail
#endif
