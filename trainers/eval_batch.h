// lctx-train --eval-batch: the first batch of the eval split (samples [0, data.batch_size)) and
// lctx's loss on it, evaluated on the CPU in f32 on one rank with the checkpoint's weights (or
// the initial weights of train.seed without --resume), written to an HDF5 file: /inputs and
// /targets (-1 = not scored) i32 [B, S], /positions i32 [S] ([B, S] with data.reset_positions),
// /losses f32 [B, S] (each token's cross-entropy, 0 where not scored), with packed documents
// /doc_ids i32 [B, S] (attention stays inside each document), and the root attributes loss
// (mean over scored targets), loss_sum, scored, correct, step, checkpoint and config. Another
// implementation (launch/export_torch.py) is compared with lctx on the same tokens through it.
#pragma once
#include <string>
#include <vector>

namespace lctx::train {

// Loads CONFIG with `overrides` (forced to one CPU rank in f32) and writes the dump to `out`.
void dump_eval_batch(const std::string& config_path, std::vector<std::string> overrides, const std::string& out);

}  // namespace lctx::train
