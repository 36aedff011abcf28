// Trainer's checkpoints: save (rank 0 writes, atomically, and applies the retention policy; see
// checkpoint.h) and resume (rank 0 loads and verifies the file, checks it against this config:
// model-shaping keys, data.seed, step <= train.steps, the parameters' shapes; then broadcasts the
// state to every rank, on any dp/sp layout).
#include <iostream>

#include "trainers/checkpoint_match.h"
#include "trainers/trainer.h"

namespace lctx::train {

std::pair<uint64_t, uint64_t> Trainer::rng_state() const {
  // Each rank's Philox stream: (seed of this rank, draws used). Nothing in training draws
  // random numbers after init yet; the state is recorded so that resumes restore it.
  return {static_cast<uint64_t>(cfg_.train.seed) * 1000003ull + static_cast<uint64_t>(world_.rank()), rng_offset_};
}

void Trainer::save() {
  const auto [seed, off] = rng_state();
  const int64_t mine[2] = {static_cast<int64_t>(seed), static_cast<int64_t>(off)};
  std::vector<int64_t> gathered(2 * static_cast<size_t>(world_.size()));
  ctrl_.all_gather(std::span<const int64_t>(mine, 2), std::span<int64_t>(gathered));
  const std::vector<uint64_t> all(gathered.begin(), gathered.end());
  on_root(ctrl_, [&] {
    CheckpointState st;
    st.step = step_;
    st.adam_step = adam_step_;
    st.rng_state = all;
    st.data_consumed_samples = consumed_;
    st.data_seed = cfg_.data.seed;
    st.skipped_steps = skipped_;
    st.mesh_dp = cfg_.parallel.dp;
    st.mesh_sp = cfg_.parallel.sp;
    st.mesh_ulysses = cfg_.parallel.ulysses;
    st.config_yaml = to_yaml(cfg_);
    const Tensor mh = m_.to(Device::cpu()), vh = v_.to(Device::cpu());
    int64_t o = 0;
    for (const Param& p : model_->params()) {
      const int64_t n = p.master.numel();
      st.params.emplace_back(p.name, p.master.to(Device::cpu()));
      st.adam_m.emplace_back(p.name, mh.slice(0, o, o + n).view(p.master.shape()));
      st.adam_v.emplace_back(p.name, vh.slice(0, o, o + n).view(p.master.shape()));
      o += n;
    }
    save_checkpoint(ckpt_dir_, st, cfg_.checkpoint.keep);
    result_.last_checkpoint = checkpoint_path(ckpt_dir_, step_);
  });
}

// Loads a checkpoint on rank 0 (checks), then broadcasts the state to every rank.
void Trainer::resume() {
  const std::string& r = cfg_.checkpoint.resume;
  if (r == "none") return;
  int64_t scalars[5] = {0, 0, 0, 0, 0};  // found, step, adam_step, consumed, skipped
  std::vector<int64_t> rng;               // (seed, offset) per rank of the saved job
  on_root(ctrl_, [&] {
    std::string file = r;
    CheckpointState st;
    if (r == "auto") {
      std::vector<std::string> skipped;
      file = find_latest_valid(ckpt_dir_, &skipped, &st);
      if (file.empty()) {
        if (!hooks_.quiet)
          std::cout << "lctx-train: no " << (skipped.empty() ? "" : "valid ") << "checkpoint in " << ckpt_dir_
                    << (skipped.empty() ? "" : " (" + std::to_string(skipped.size()) + " skipped, see above)")
                    << "; starting from scratch\n";
        return;
      }
    } else {
      st = load_checkpoint(file);
    }
    if (st.format_version == 1 && !hooks_.quiet)
      std::cerr << "lctx-train: warning: checkpoint " << file
                << " is format 1: its root attributes carry no checksum, they were only range-checked\n";
    check_compatible(st, file);
    LCTX_CHECK(st.step <= cfg_.train.steps, "cannot resume from ", file, ": its attribute 'step' is ", st.step,
               ", beyond train.steps = ", cfg_.train.steps,
               " (raise train.steps to continue that run, or resume from an earlier checkpoint)");
    int64_t o = 0;
    for (Param& p : model_->params()) {
      const int64_t n = p.master.numel();
      p.master.copy_from(matching_tensor(st.params, p, "parameter", file));
      m_.slice(0, o, o + n).copy_from(matching_tensor(st.adam_m, p, "optimizer moment m", file).view({n}));
      v_.slice(0, o, o + n).copy_from(matching_tensor(st.adam_v, p, "optimizer moment v", file).view({n}));
      o += n;
    }
    LCTX_CHECK(st.params.size() == model_->params().size(), "checkpoint ", file, " has ", st.params.size(),
               " parameters, the model has ", model_->params().size());
    scalars[0] = 1, scalars[1] = st.step, scalars[2] = st.adam_step, scalars[3] = st.data_consumed_samples,
    scalars[4] = st.skipped_steps;
    rng.assign(st.rng_state.begin(), st.rng_state.end());
    result_.resumed_from = file;
    if (!hooks_.quiet && (st.mesh_dp != cfg_.parallel.dp || st.mesh_sp != cfg_.parallel.sp))
      std::cout << "lctx-train: checkpoint written on dp " << st.mesh_dp << " sp " << st.mesh_sp << ", resuming on dp "
                << cfg_.parallel.dp << " sp " << cfg_.parallel.sp << "\n";
  });
  ctrl_.broadcast(std::span<int64_t>(scalars, 5), 0);
  if (!scalars[0]) return;
  if (world_.size() > 1) {
    world_.broadcast(model_->flat_params(), 0);
    world_.broadcast(m_, 0);
    world_.broadcast(v_, 0);
  }
  model_->sync_compute_weights();
  step_ = scalars[1], adam_step_ = scalars[2], consumed_ = scalars[3], skipped_ = scalars[4];
  if (is_root()) result_.start_step = step_;
  // Per-rank RNG streams: a rank that existed in the saved job continues its stream; on a
  // larger world the new ranks start theirs at 0.
  int64_t n = static_cast<int64_t>(rng.size());
  ctrl_.broadcast(std::span<int64_t>(&n, 1), 0);
  rng.resize(static_cast<size_t>(n));
  if (n > 0) ctrl_.broadcast(std::span<int64_t>(rng), 0);
  const size_t mine = 2 * static_cast<size_t>(world_.rank());
  rng_offset_ = mine + 1 < rng.size() ? static_cast<uint64_t>(rng[mine + 1]) : 0;
}

// The model-shaping options and the data stream must match the checkpoint's.
void Trainer::check_compatible(const CheckpointState& st, const std::string& file) const {
  const Config saved = check_model_shaping(st, file, cfg_);
  // Without attribute checksums (format 1) the sample count is only range-checked on load; it
  // should be step * data.batch_size unless the batch size changed during the run.
  const int64_t batch = saved.data.batch_size, consumed = st.data_consumed_samples;
  if (st.format_version == 1 && (consumed % batch != 0 || consumed / batch != st.step) && !hooks_.quiet)
    std::cerr << "lctx-train: warning: checkpoint " << file << ": attribute 'data_consumed_samples' is "
              << consumed << ", not step * data.batch_size = " << st.step << " * " << batch
              << " (expected unless data.batch_size changed during the run)\n";
  LCTX_CHECK(st.data_seed == cfg_.data.seed, "cannot resume from ", file, ": data.seed is ", st.data_seed,
             " in the checkpoint but ", cfg_.data.seed, " in this config (the data stream would change)");
}

}  // namespace lctx::train
