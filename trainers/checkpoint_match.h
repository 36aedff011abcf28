// What ties a checkpoint to the model it is loaded into: the stored config's model-shaping keys
// equal this config's (so the parameters mean the same thing), and every parameter (and AdamW
// moment) is found by name at the model's shape. Shared by resume (trainer_checkpoint.cpp) and
// --eval-batch (eval_batch.cpp); errors name the file, the key or the tensor.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "mixers/param.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"

namespace lctx::train {

// The checkpoint's config (attribute 'config'), checked key by key against `cfg`'s
// model-shaping keys.
Config check_model_shaping(const CheckpointState& st, const std::string& file, const Config& cfg);

// The tensor of `v` named like `p` (`what`: "parameter", "optimizer moment m", ...), at p's shape.
const Tensor& matching_tensor(const std::vector<std::pair<std::string, Tensor>>& v, const mixers::Param& p,
                              const char* what, const std::string& file);

}  // namespace lctx::train
