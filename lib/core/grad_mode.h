// How a backward writes gradients: overwrite (grad = new) or accumulate (grad += new, for
// gradient accumulation over micro-batches and for ring attention's per-block contributions).
#pragma once

namespace lctx {

enum class GradMode { overwrite, accumulate };

}  // namespace lctx
