#include "trainers/train.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <thread>

#include "core/allocator.h"
#include "dist/comm.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/mpi_comm.h"
#include "dist/nccl_comm.h"
#include "dist/sim_comm.h"
#include "ops/adamw.h"
#include "ops/grad_clip.h"
#include "trainers/checkpoint.h"
#include "trainers/data.h"
#include "trainers/model.h"
#include "trainers/step_profile.h"

namespace fs = std::filesystem;

namespace lctx::train {

namespace {

std::atomic<int> g_stop_signal{0};

void on_signal(int sig) { g_stop_signal.store(sig); }

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string json_num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, units[u]);
  return buf;
}

std::string human_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::string human_rate(double r) {
  char buf[32];
  if (r >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", r / 1e6);
  else if (r >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", r / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", r);
  return buf;
}

// This process's rank on its node (from the launcher's environment), else `fallback`.
int local_rank(int fallback) {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return fallback;
}

// train.device resolved: simulated ranks share GPU 0; real ranks take one GPU each per node.
Device device_for(const Config& cfg, bool simulated, int world_rank) {
  const std::string& d = cfg.train.device;
  if (d == "cpu" || (d == "auto" && !cuda_available())) return Device::cpu();
  LCTX_CHECK(cuda_available(), "train.device = cuda but no CUDA GPU is usable (lctx built with CUDA: ",
#ifdef LCTX_HAVE_CUDA
             "yes",
#else
             "no",
#endif
             ")");
  validate_for_gpu(cfg);
  if (simulated) return Device::cuda(0);
  return Device::cuda(local_rank(world_rank) % cuda_device_count());
}

// Runs `fn` on rank 0 only; every rank then learns whether it failed and throws the same error.
template <class Fn>
void on_root(dist::Comm& comm, Fn&& fn) {
  std::string err;
  if (comm.rank() == 0) {
    try {
      fn();
    } catch (const std::exception& e) {
      err = e.what();
      if (err.empty()) err = "unknown error";
    }
  }
  int64_t len = static_cast<int64_t>(err.size());
  comm.broadcast(std::span<int64_t>(&len, 1), 0);
  if (len == 0) return;
  std::vector<int32_t> buf(err.begin(), err.end());  // the comms move typed elements, not chars
  buf.resize(static_cast<size_t>(len));
  comm.broadcast(std::span<int32_t>(buf.data(), buf.size()), 0);
  std::string msg;
  for (int32_t c : buf) msg += static_cast<char>(c);
  throw Error(msg);
}

// Everything one rank holds during training.
class Trainer {
 public:
  // world: the communicator for tensors on the compute device (gradients, attention);
  // ctrl: the same ranks for host values (counters, flags, messages). They are one and the
  // same communicator except with NCCL, whose ctrl is the MPI communicator it was built from.
  Trainer(const Config& cfg, dist::Comm& world, dist::Comm& ctrl, RunResult& result, const RunHooks& hooks)
      : cfg_(cfg), world_(world), ctrl_(ctrl), result_(result), hooks_(hooks) {
    validate_world(cfg_, world_.size());
    const auto& p = cfg_.parallel;
    dist::MeshShape shape;
    shape.dp = static_cast<int>(p.dp);
    shape.ulysses = static_cast<int>(p.ulysses);
    shape.ring = static_cast<int>(p.sp / p.ulysses);
    mesh_ = std::make_unique<dist::Mesh>(world_, shape);
    layout_ = std::make_unique<dist::Layout>(dist::LayoutKind::zigzag, cfg_.data.seq_len, shape.ring, shape.ulysses);
    shard_.dp = p.dp;
    shard_.dp_rank = mesh_->coords().dp;
    shard_.positions = layout_->positions(mesh_->coords().sp);
    device_ = pick_device();
    model_ = std::make_unique<Model>(cfg_, device_, *mesh_, *layout_);
    model_->init(static_cast<uint64_t>(cfg_.train.seed));
    if (cfg_.logging.profile && is_root()) {  // rank 0 reports; its waits on the others show in its phases
      profile_ = std::make_unique<StepProfile>(device_);
      model_->set_profile(profile_.get());
    }
    m_ = Tensor::zeros({model_->num_params()}, DType::f32, device_);
    v_ = Tensor::zeros({model_->num_params()}, DType::f32, device_);
    data_ = make_dataset(cfg_.data, cfg_.model.vocab_size);
    out_dir_ = cfg_.logging.out_dir;
    ckpt_dir_ = (fs::path(out_dir_) / "checkpoints").string();
  }

  void run() {
    const auto t0 = Clock::now();
    on_root(ctrl_, [&] { prepare_out_dir(); });
    resume();
    on_root(ctrl_, [&] { open_metrics(); });
    if (is_root()) banner();

    const int64_t total = cfg_.train.steps;
    const char* nan_env = std::getenv(kInjectNanEnv);
    const int64_t inject_nan_at = nan_env ? std::atoll(nan_env) : -1;
    auto log_t = Clock::now();
    int64_t log_tokens = 0;
    const auto run_t0 = Clock::now();
    const int64_t first_step = step_;
    bool stopped = false;
    while (step_ < total) {
      const double lr = learning_rate(cfg_, step_);
      Batch batch = make_batch(*data_, cfg_.data, Split::train, consumed_, shard_);
      int64_t scored_global = batch.scored;
      ctrl_.all_reduce(std::span<int64_t>(&scored_global, 1), dist::ReduceOp::sum);
      if (profile_) profile_->start(Phase::forward);
      StepStats st = model_->forward_backward(batch, 1.0 / static_cast<double>(std::max<int64_t>(1, scored_global)));
      if (profile_) profile_->enter(Phase::grad_sync);
      if (step_ + 1 == inject_nan_at && world_.rank() == 0) {
        Tensor g = model_->flat_grads().slice(0, 0, 1);
        g.fill(NAN);
      }
      if (world_.size() > 1) world_.all_reduce(model_->flat_grads(), dist::ReduceOp::sum);
      double sums[3] = {st.loss_sum, st.correct, st.scored};
      ctrl_.all_reduce(std::span<double>(sums, 3), dist::ReduceOp::sum);

      if (profile_) profile_->enter(Phase::optimizer);
      const Tensor grads[1] = {model_->flat_grads()};
      const ops::GradNorm gn = cfg_.optimizer.grad_clip > 0 ? ops::clip_grad_norm(grads, cfg_.optimizer.grad_clip)
                                                            : ops::grad_norm(grads);
      StepRecord rec;
      rec.step = step_ + 1;
      rec.loss = sums[2] > 0 ? sums[0] / sums[2] : 0.0;
      rec.accuracy = sums[2] > 0 ? sums[1] / sums[2] : 0.0;
      rec.grad_norm = gn.norm;
      rec.lr = lr;
      if (!gn.finite) {
        rec.skipped = true;
        ++skipped_;
        if (is_root())
          std::cerr << "lctx-train: step " << rec.step << ": non-finite gradient norm (" << gn.norm
                    << "); update skipped (" << skipped_ << " skipped so far)\n";
      } else {
        apply_adamw(lr);
      }
      if (profile_) {
        const auto ms = profile_->finish();
        for (int i = 0; i < kPhases; ++i) profile_ms_[i] += ms[i];
        ++profile_steps_;
      }
      consumed_ += cfg_.data.batch_size;
      ++step_;
      log_tokens += cfg_.data.batch_size * cfg_.data.seq_len;

      if (is_root()) {
        result_.train.push_back(rec);
        const bool log_now = step_ % cfg_.logging.every == 0 || step_ == total || rec.skipped;
        if (log_now) {
          const double dt = seconds_since(log_t);
          const double tok_s = dt > 0 ? static_cast<double>(log_tokens) / dt : 0.0;
          const double per_step = seconds_since(run_t0) / static_cast<double>(step_ - first_step);
          write_train_record(rec, tok_s);
          if (cfg_.logging.progress && !hooks_.quiet) progress(rec, tok_s, per_step * static_cast<double>(total - step_));
          profile_ms_ = {};
          profile_steps_ = 0;
          log_t = Clock::now();
          log_tokens = 0;
        }
        if (hooks_.after_step) hooks_.after_step(step_);
      }

      int32_t stop = g_stop_signal.load();
      ctrl_.all_reduce(std::span<int32_t>(&stop, 1), dist::ReduceOp::max);
      const bool last = step_ == total;
      if (cfg_.eval.batches > 0 && (last || stop || (cfg_.eval.every > 0 && step_ % cfg_.eval.every == 0))) evaluate();
      if (stop || (last && cfg_.checkpoint.save_final) || (cfg_.checkpoint.every > 0 && step_ % cfg_.checkpoint.every == 0))
        save();
      if (stop) {
        if (is_root())
          std::cerr << "lctx-train: received signal " << stop << "; saved a checkpoint at step " << step_
                    << " and stopped\n";
        stopped = true;
        break;
      }
    }
    if (is_root()) {
      result_.final_step = step_;
      result_.skipped_steps = skipped_;
      result_.stopped_by_signal = stopped;
      result_.wall_s = seconds_since(t0);
      if (metrics_.is_open()) metrics_.flush();
    }
  }

 private:
  bool is_root() const { return world_.rank() == 0; }

  Device pick_device() const { return device_for(cfg_, world_.backend() == std::string_view("sim"), world_.rank()); }

  void prepare_out_dir() {
    fs::create_directories(out_dir_);
    std::ofstream(fs::path(out_dir_) / "config.yaml") << to_yaml(cfg_);
  }

  // Metrics of a resumed run keep the records up to the resumed step.
  void open_metrics() {
    const fs::path p = fs::path(out_dir_) / "metrics.jsonl";
    std::vector<std::string> keep;
    if (step_ > 0) {
      std::ifstream in(p);
      static const std::regex step_re(R"("step": (\d+))");
      for (std::string line; std::getline(in, line);) {
        std::smatch m;
        if (std::regex_search(line, m, step_re) && std::stoll(m[1]) <= step_) keep.push_back(line);
      }
    }
    metrics_.open(p, std::ios::trunc);
    LCTX_CHECK(metrics_.good(), "cannot write ", p.string());
    for (const auto& l : keep) metrics_ << l << "\n";
    metrics_.flush();
  }

  void banner() {
    if (hooks_.quiet) return;
    const auto& m = cfg_.model;
    std::ostringstream kinds;
    for (int64_t l = 0; l < m.n_layers; ++l) kinds << (l ? "," : "") << cfg_.attention.kind_of(l);
    std::cout << "lctx-train: " << model_->num_params() << " parameters (" << m.n_layers << " layers, dim " << m.dim
              << ", heads " << m.n_heads << "/" << m.kv_heads() << ", attention " << kinds.str() << ", "
              << dtype_name(model_->compute_dtype()) << " on " << device_.str() << ")\n"
              << "lctx-train: " << world_.size() << " rank(s) [" << world_.backend() << "] dp " << cfg_.parallel.dp
              << " sp " << cfg_.parallel.sp << "; data: " << data_->describe() << ", seq_len " << cfg_.data.seq_len
              << ", batch " << cfg_.data.batch_size << "; " << cfg_.train.steps << " steps -> " << out_dir_ << "\n";
    if (step_ > 0) std::cout << "lctx-train: resumed from " << result_.resumed_from << " at step " << step_ << "\n";
    std::cout.flush();
  }

  // Model FLOPs utilisation per GPU: (6 * non-embedding params + 6 * layers * heads * head_dim
  // * seq_len (causal attention)) per token, over the configured peak. 0 on the CPU.
  double mfu(double tok_s) const {
    if (!device_.is_cuda()) return 0.0;
    const auto& m = cfg_.model;
    const double non_embedding = static_cast<double>(model_->num_params() - m.vocab_size * m.dim);
    const double attention = 6.0 * static_cast<double>(m.n_layers * m.n_heads * m.head_dim()) *
                             static_cast<double>(cfg_.data.seq_len);
    const double flops_per_token = 6.0 * non_embedding + attention;
    return flops_per_token * tok_s / (static_cast<double>(world_.size()) * cfg_.logging.peak_tflops * 1e12);
  }

  void progress(const StepRecord& r, double tok_s, double eta_s) {
    const MemoryStats ms = memory_stats(device_);
    char mfu_buf[32] = "";
    if (device_.is_cuda()) std::snprintf(mfu_buf, sizeof mfu_buf, " | MFU %.3f", mfu(tok_s));
    char buf[320];
    std::snprintf(buf, sizeof buf, "step %6lld/%lld | loss %.4f | acc %5.1f%% | lr %.2e | gnorm %.3f | %s tok/s%s | ETA %s | mem %s%s",
                  static_cast<long long>(r.step), static_cast<long long>(cfg_.train.steps), r.loss, 100.0 * r.accuracy,
                  r.lr, r.grad_norm, human_rate(tok_s).c_str(), mfu_buf, human_time(eta_s).c_str(),
                  human_bytes(static_cast<double>(ms.peak_bytes)).c_str(), r.skipped ? " | SKIPPED (non-finite grad)" : "");
    std::cout << buf << std::endl;
    if (profile_steps_ > 0) {
      double total = 0;
      for (double v : profile_ms_) total += v;
      std::string line = "  profile per step";
      for (int i = 0; i < kPhases; ++i) {
        const double ms = profile_ms_[i] / static_cast<double>(profile_steps_);
        std::snprintf(buf, sizeof buf, " | %s %.*f %s (%.0f%%)", std::string(phase_name(static_cast<Phase>(i))).c_str(),
                      ms >= 1000 ? 2 : 1, ms >= 1000 ? ms / 1000 : ms, ms >= 1000 ? "s" : "ms",
                      total > 0 ? 100 * profile_ms_[i] / total : 0.0);
        line += buf;
      }
      std::cout << line << std::endl;
    }
  }

  void write_train_record(const StepRecord& r, double tok_s) {
    const MemoryStats ms = memory_stats(device_);
    metrics_ << "{\"split\": \"train\", \"step\": " << r.step << ", \"loss\": " << json_num(r.loss)
             << ", \"accuracy\": " << json_num(r.accuracy) << ", \"lr\": " << json_num(r.lr)
             << ", \"grad_norm\": " << json_num(r.grad_norm) << ", \"tokens_per_s\": " << json_num(tok_s)
             << ", \"mfu\": " << json_num(mfu(tok_s))
             << ", \"tokens\": " << consumed_ * cfg_.data.seq_len << ", \"skipped\": " << (r.skipped ? "true" : "false")
             << ", \"skipped_total\": " << skipped_ << ", \"mem_peak_bytes\": " << ms.peak_bytes;
    if (profile_steps_ > 0) {  // milliseconds per step, averaged since the last record
      metrics_ << ", \"profile_ms\": {";
      for (int i = 0; i < kPhases; ++i)
        metrics_ << (i ? ", \"" : "\"") << phase_name(static_cast<Phase>(i))
                 << "\": " << json_num(profile_ms_[i] / static_cast<double>(profile_steps_));
      metrics_ << "}";
    }
    metrics_ << "}\n";
    metrics_.flush();
  }

  void apply_adamw(double lr) {
    ++adam_step_;
    ops::AdamWConfig a;
    a.lr = static_cast<float>(lr);
    a.beta1 = static_cast<float>(cfg_.optimizer.beta1);
    a.beta2 = static_cast<float>(cfg_.optimizer.beta2);
    a.eps = static_cast<float>(cfg_.optimizer.eps);
    int64_t off = 0;
    for (Param& p : model_->params()) {
      const int64_t n = p.master.numel();
      Tensor m = m_.slice(0, off, off + n).view(p.master.shape());
      Tensor v = v_.slice(0, off, off + n).view(p.master.shape());
      a.weight_decay = p.decay ? static_cast<float>(cfg_.optimizer.weight_decay) : 0.0f;
      Tensor param = model_->compute_dtype() == DType::f32 ? Tensor() : p.compute;
      ops::adamw_update(param, p.master, m, v, p.grad, a, adam_step_);
      off += n;
    }
  }

  void evaluate() {
    StepStats tot;
    for (int64_t i = 0; i < cfg_.eval.batches; ++i) {
      Batch b = make_batch(*data_, cfg_.data, Split::eval, i * cfg_.data.batch_size, shard_);
      const StepStats s = model_->evaluate(b);
      tot.loss_sum += s.loss_sum, tot.correct += s.correct, tot.scored += s.scored;
    }
    double sums[3] = {tot.loss_sum, tot.correct, tot.scored};
    ctrl_.all_reduce(std::span<double>(sums, 3), dist::ReduceOp::sum);
    if (!is_root()) return;
    StepRecord r;
    r.step = step_;
    r.loss = sums[2] > 0 ? sums[0] / sums[2] : 0.0;
    r.accuracy = sums[2] > 0 ? sums[1] / sums[2] : 0.0;
    result_.eval.push_back(r);
    metrics_ << "{\"split\": \"eval\", \"step\": " << r.step << ", \"loss\": " << json_num(r.loss)
             << ", \"accuracy\": " << json_num(r.accuracy) << ", \"tokens\": " << consumed_ * cfg_.data.seq_len << "}\n";
    metrics_.flush();
    if (cfg_.logging.progress && !hooks_.quiet) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "eval @ step %lld | loss %.4f | acc %5.1f%% (%lld answer tokens)",
                    static_cast<long long>(r.step), r.loss, 100.0 * r.accuracy, static_cast<long long>(sums[2]));
      std::cout << buf << std::endl;
    }
  }

  std::pair<uint64_t, uint64_t> rng_state() const {
    // Each rank's Philox stream: (seed of this rank, draws used). Nothing in training draws
    // random numbers after init yet; the state is recorded so that resumes restore it.
    return {static_cast<uint64_t>(cfg_.train.seed) * 1000003ull + static_cast<uint64_t>(world_.rank()), rng_offset_};
  }

  void save() {
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
  void resume() {
    const std::string& r = cfg_.checkpoint.resume;
    if (r == "none") return;
    int64_t scalars[5] = {0, 0, 0, 0, 0};  // found, step, adam_step, consumed, skipped
    std::vector<int64_t> rng;               // (seed, offset) per rank of the saved job
    on_root(ctrl_, [&] {
      std::string file = r;
      CheckpointState st;
      if (r == "auto") {
        file = find_latest_valid(ckpt_dir_, nullptr, &st);
        if (file.empty()) {
          if (!hooks_.quiet) std::cout << "lctx-train: no checkpoint in " << ckpt_dir_ << "; starting from scratch\n";
          return;
        }
      } else {
        st = load_checkpoint(file);
      }
      check_compatible(st, file);
      int64_t o = 0;
      for (Param& p : model_->params()) {
        const int64_t n = p.master.numel();
        const auto find = [&](const std::vector<std::pair<std::string, Tensor>>& v, const char* what) -> const Tensor& {
          for (const auto& [name, t] : v)
            if (name == p.name) {
              LCTX_CHECK(t.shape() == p.master.shape(), "checkpoint ", file, ": ", what, " ", name, " has shape ",
                         shape_str(t.shape()), ", the model expects ", shape_str(p.master.shape()));
              return t;
            }
          LCTX_FAIL("checkpoint ", file, " has no ", what, " '", p.name, "'");
        };
        p.master.copy_from(find(st.params, "parameter"));
        m_.slice(0, o, o + n).copy_from(find(st.adam_m, "optimizer moment m").view({n}));
        v_.slice(0, o, o + n).copy_from(find(st.adam_v, "optimizer moment v").view({n}));
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
  void check_compatible(const CheckpointState& st, const std::string& file) const {
    Config saved;
    try {
      saved = parse_config(st.config_yaml);
    } catch (const Error& e) {
      LCTX_FAIL("checkpoint ", file, ": its stored config does not parse: ", e.what());
    }
    for (const auto& key : model_shaping_keys()) {
      const std::string a = option_value(saved, key), b = option_value(cfg_, key);
      LCTX_CHECK(a == b, "cannot resume from ", file, ": model-shaping key ", key, " is ", a,
                 " in the checkpoint but ", b, " in this config");
    }
    LCTX_CHECK(st.data_seed == cfg_.data.seed, "cannot resume from ", file, ": data.seed is ", st.data_seed,
               " in the checkpoint but ", cfg_.data.seed, " in this config (the data stream would change)");
  }

  const Config& cfg_;
  dist::Comm& world_;
  dist::Comm& ctrl_;
  RunResult& result_;
  const RunHooks& hooks_;
  Shard shard_;
  std::unique_ptr<dist::Mesh> mesh_;
  std::unique_ptr<dist::Layout> layout_;
  Device device_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<StepProfile> profile_;    // logging.profile
  std::array<double, kPhases> profile_ms_{};  // per phase, summed over the steps since the last log
  int64_t profile_steps_ = 0;
  Tensor m_, v_;
  std::unique_ptr<Dataset> data_;
  std::string out_dir_, ckpt_dir_;
  std::ofstream metrics_;
  int64_t step_ = 0, adam_step_ = 0, consumed_ = 0, skipped_ = 0;
  uint64_t rng_offset_ = 0;
};

// OpenMP threads of each rank: train.threads, else OMP_NUM_THREADS when set, else the cores
// shared by the ranks on this node (threads of this process, or processes of this node).
int threads_per_rank(const Config& cfg, int ranks_in_process) {
  if (cfg.train.threads > 0) return static_cast<int>(cfg.train.threads);
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env && std::atoi(env) > 0)
    return std::max(1, std::atoi(env) / std::max(1, ranks_in_process));
  int ranks_on_node = ranks_in_process;
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"})
    if (const char* v = std::getenv(var); v && std::atoi(v) > 0) {
      ranks_on_node = std::atoi(v) * ranks_in_process;
      break;
    }
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, hw / std::max(1, ranks_on_node));
}

}  // namespace

double learning_rate(const Config& cfg, int64_t step) {
  const auto& o = cfg.optimizer;
  const int64_t total = cfg.train.steps;
  if (step < o.warmup_steps) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  const int64_t decay = total - o.warmup_steps;
  if (decay <= 1) return o.lr;
  const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / static_cast<double>(decay - 1));
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * t));
}

void request_stop(int signal) { g_stop_signal.store(signal); }

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

RunResult run_training(const Config& cfg, const RunHooks& hooks) {
  RunResult result;
  g_stop_signal.store(0);  // a stop requested from here on ends this run at a step boundary
  const auto body = [&](dist::Comm& world, dist::Comm& ctrl, int ranks_in_process) {
    omp_set_num_threads(threads_per_rank(cfg, ranks_in_process));
    Trainer t(cfg, world, ctrl, result, hooks);
    t.run();
  };
  const std::string& backend = cfg.parallel.backend;
  const bool multi_process = dist::launched_with_mpi();
  if (cfg.parallel.simulate > 0 || backend == "sim") {
    const int n = static_cast<int>(std::max<int64_t>(1, cfg.parallel.simulate));
    dist::run_simulated(n, [&](dist::Comm& c) { body(c, c, n); });
  } else if (backend == "nccl" || (backend == "auto" && multi_process && device_for(cfg, false, 0).is_cuda())) {
#ifdef LCTX_HAVE_CUDA
    auto boot = dist::MpiComm::world();
    const Device dev = device_for(cfg, false, boot->rank());
    LCTX_CHECK(dev.is_cuda(), "parallel.backend = nccl needs GPUs (train.device resolved to cpu)");
    dist::NcclComm nccl(*boot, dev.index);
    body(nccl, *boot, 1);
#else
    LCTX_FAIL("parallel.backend = nccl needs lctx built with CUDA (LCTX_CUDA=ON)");
#endif
  } else if (backend == "mpi" || (backend == "auto" && multi_process)) {
    auto world = dist::MpiComm::world();
    body(*world, *world, 1);
  } else {
    validate_world(cfg, 1);
    dist::run_simulated(1, [&](dist::Comm& c) { body(c, c, 1); });
  }
  return result;
}

}  // namespace lctx::train
