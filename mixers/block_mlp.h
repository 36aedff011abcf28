// Learned block compression (NSA's phi; `compress: mlp` of the nsa kind): the sequence cut into
// blocks of b tokens, each complete block's K rows, and with separate weights its V rows,
// compressed per KV head into one row by a two-layer MLP shared across the KV heads:
//   row_c = W2 gelu(W1 concat_t(x_{c b + t} + pos_t) + b1) + b2,   t = 0 .. b - 1,
// x the block's rows [b, hd], pos [b, hd] a learned intra-block position embedding, W1
// [hidden, b hd], W2 [hd, hidden] (gelu: the tanh form of ops/gelu.h). A trailing partial block
// (S not a multiple of b) is never formed.
// Sequence parallelism: b must divide every segment of the layout, so that each block lies on
// one rank (its rows consecutive in local order). Each rank compresses its own blocks into a
// zeroed [2, B, N, Hkv, hd] buffer and one all-reduce (sum) gives every rank all N rows. An
// all-reduce rather than dist::row_gather: a compressed row is not a token row (no position to
// gather it from), the N = S / b rows are few, and it is the one collective of block_means.h.
// Backward: the rows' gradients of every rank's queries are summed the same way, then each rank
// back-propagates its own blocks only: its parameter gradients are its blocks' share, and the
// trainer's sum over the ranks counts each block once. Any device: the blocks are packed by
// ops::embedding (a gather by row index, and its scatter-add backward), the MLP is ops::linear
// and ops::gelu (CPU f32/f64, CUDA bf16/f16; on CUDA the position embedding's gradient is summed
// by fp32 atomics, so its last bits may vary from run to run).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "mixers/block_means.h"  // BlockRows
#include "mixers/param.h"

namespace lctx::dist {
class Comm;
}

namespace lctx::mixers {

// One compressor's tensors, as weights (the compute dtype, that of the rows) or as gradients
// (wide: f32, f64 for f64; overwritten by the backward).
struct BlockMlp {
  Tensor pos;  // [b, hd]
  Tensor w1;   // [hidden, b hd]
  Tensor b1;   // [hidden]
  Tensor w2;   // [hd, hidden]
  Tensor b2;   // [hd]
};
struct BlockMlpPair {
  BlockMlp k, v;
};

// The 10 parameters of a pair, named prefix + {k, v} + _{pos, w1, b1, w2, b2} in that order:
// pos, w1, w2 normal (pos without weight decay), the biases zero.
std::vector<ParamSpec> block_mlp_param_specs(const std::string& prefix, int64_t block, int64_t head_dim,
                                             int64_t hidden);

enum class ParamPart { compute, grad };
// The pair's tensors from the 10 bound parameters (in block_mlp_param_specs order).
BlockMlpPair block_mlp_view(std::span<const Param> p, ParamPart part);

// k, v [B, L, Hkv, hd]: this rank's rows at global positions `positions` (local order).
// Returns the N = `blocks` compressed rows (the same on every rank). Collective over `sp`.
BlockRows block_mlp_forward(dist::Comm& sp, const Tensor& k, const Tensor& v, std::span<const int64_t> positions,
                            int64_t block, int64_t blocks, const BlockMlpPair& w);

// dc [2, B, N, Hkv, hd] (wide): this rank's gradients of the compressed rows (k then v), summed
// over the group in place. Adds this rank's blocks' gradients into dk, dv [B, L, Hkv, hd] (wide,
// contiguous) and overwrites `grads` with its blocks' parameter gradients. Collective over `sp`.
void block_mlp_backward(dist::Comm& sp, const Tensor& dc, const Tensor& k, const Tensor& v,
                        std::span<const int64_t> positions, int64_t block, const BlockMlpPair& w,
                        const BlockMlpPair& grads, const Tensor& dk, const Tensor& dv);

}  // namespace lctx::mixers
