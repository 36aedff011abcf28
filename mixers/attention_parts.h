// Small parts shared by the attention kinds that feed learned tokens (sinks, global or memory
// tokens) through their AttentionCore besides the sequence (local_global, memory): a dtype
// cast, batch repeat and sum of a [1, ...] tensor, learned tokens as Tokens at position 0
// (RoPE leaves them unrotated), adding to parameter gradients that a projection used twice
// would otherwise overwrite, and the backward of learned tokens used as keys.
#pragma once
#include <functional>
#include <span>

#include "core/tensor.h"
#include "mixers/attention_core.h"
#include "mixers/mixer.h"
#include "mixers/param.h"

namespace lctx::mixers {

// t in dtype dt (t itself when it already is).
Tensor cast(const Tensor& t, DType dt);

// [1, ...] repeated along dim 0: [B, ...] (contiguous).
Tensor repeat_batch(const Tensor& t, int64_t B);

// Sum over dim 0 of [B, ...]: [1, ...] in t's dtype (use a wide t to sum in fp32).
Tensor sum_batch(const Tensor& t);

// n learned rows x [n, D] (viewed as [1, n, D]) or [B', n, D] as Tokens, every one at
// position 0.
Tokens at_position_zero(const Tensor& x);

// Runs f, which overwrites some of `params`' gradients, so that it adds to the gradients they
// hold before (those f leaves alone end as they were).
void adding_grads(std::span<Param> params, const std::function<void()>& f);

// The backward of learned tokens used as keys only (sinks, memory tokens): `tokens` [n, D]
// went through core's q/k/v at position 0 into acts, and their K/V, repeated along the batch,
// got dk, dv [B, n, Hkv, hd] from this rank's queries. Writes tokens.grad and adds to the
// core's parameter gradients (core_params, which the core's backward would overwrite).
void learned_kv_backward(AttentionCore& core, std::span<Param> core_params, QkvActs& acts, const Tensor& dk,
                         const Tensor& dv, const Param& tokens);

}  // namespace lctx::mixers
