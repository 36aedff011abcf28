// ParamTable: the parameters of a whole model (or of one mixer in a test) in declaration
// order. Specs are added first (names prefixed per layer), then allocate() lays them out in one
// flat master buffer and one flat gradient buffer, so gradients are summed over ranks and
// stepped by the optimizer as one tensor, and init() fills every master as its spec declares
// (parameter i draws from its own part of the Philox stream, offset i << 40).
#pragma once
#include <span>
#include <string>
#include <vector>

#include "mixers/param.h"

namespace lctx::mixers {

class ParamTable {
 public:
  // Declares `specs` with names prefixed by `prefix`; returns the index of the first.
  size_t add(const std::string& prefix, std::span<const ParamSpec> specs);
  size_t add(const ParamSpec& spec) { return add("", std::span<const ParamSpec>(&spec, 1)); }

  // Flat master/gradient buffers in `master` dtype (f32; f64 for CPU gradient checks) on
  // `device`, and the compute copies in `compute` (the master itself when the dtypes agree).
  void allocate(Device device, DType master, DType compute);
  // Every master as declared (ctx.offset is ignored: parameter i uses offset i << 40), then
  // the compute copies refreshed and the gradients zeroed.
  void init(const InitContext& ctx);
  // Copies the masters into the compute copies (after they changed).
  void sync_compute();

  std::vector<Param>& params() { return params_; }
  const std::vector<Param>& params() const { return params_; }
  std::span<const Param> range(size_t first, size_t count) const { return {params_.data() + first, count}; }
  Tensor& flat_params() { return flat_params_; }
  Tensor& flat_grads() { return flat_grads_; }
  int64_t numel() const { return flat_params_.numel(); }

 private:
  std::vector<ParamSpec> specs_;
  std::vector<Param> params_;
  Tensor flat_params_, flat_grads_;
};

}  // namespace lctx::mixers
