// One mixer layer as lctx-train builds it (trainers/mixer_registry.h), timed on one GPU: the
// kind and its options from config overrides, B = 1, one rank, contiguous layout, bf16 compute
// with fp32 master weights, the layer's own projections included. Shared by bench_memory (the
// sparse memory kinds) and bench_ssm (Mamba layers next to a softmax layer).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench_timing.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/sim_comm.h"
#include "mixers/param_table.h"
#include "trainers/config.h"
#include "trainers/mixer_registry.h"

namespace lctx::bench {

struct MixerTimes {
  double fwd_ms = 0, fb_ms = 0;  // forward; forward + backward
};

// `config`: model.mixers, model.dim and the kind's options (overrides as lctx-train's --set
// takes them); the layer runs at T tokens, the median of `reps` timed calls.
inline MixerTimes time_mixer(std::vector<std::string> config, int64_t T, int reps) {
  for (const char* o : {"model.n_layers=1", "parallel.layout=contiguous", "train.device=cuda"}) config.push_back(o);
  config.push_back("data.seq_len=" + std::to_string(T));
  const train::Config cfg = train::parse_config("", config);
  const std::string kind = cfg.model.mixer_of(0);
  MixerTimes times;
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::contiguous, T, 1, 1);
    std::unique_ptr<mixers::Mixer> mixer = train::mixer_kind(kind).make(cfg, mesh, layout);
    mixers::ParamTable table;
    const std::vector<mixers::ParamSpec> specs = mixer->param_specs();
    table.add("", specs);
    table.allocate(Device::cuda(), DType::f32, DType::bf16);
    table.init({.seed = 1, .init_std = 0.02, .n_layers = 1});
    mixer->bind(table.range(0, specs.size()));
    mixers::Tokens in;
    in.x = random_cuda({1, T, cfg.model.dim}, DType::bf16, 1);
    in.positions = layout.positions_tensor(0, DType::i32).to(Device::cuda());
    const Tensor dy = random_cuda({1, T, cfg.model.dim}, DType::bf16, 2);
    Tensor dx = Tensor::empty(in.x.shape(), DType::bf16, Device::cuda());
    const int warm = T >= 131072 ? 1 : 2;
    std::unique_ptr<mixers::Saved> saved;
    times.fwd_ms = median_ms([&] { mixer->forward(in, saved, mixers::Pass::train); }, reps, warm);
    times.fb_ms = median_ms(
        [&] {
          mixer->forward(in, saved, mixers::Pass::train);
          mixer->backward(dx, dy, in, *saved);
        },
        reps, warm);
  });
  return times;
}

}  // namespace lctx::bench
