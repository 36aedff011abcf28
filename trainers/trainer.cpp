#include "trainers/trainer.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "ops/adamw.h"
#include "ops/grad_clip.h"
#include "trainers/topology.h"

namespace fs = std::filesystem;

namespace lctx::train {

namespace {

// Bytes this rank has handed to its sequence-parallel groups so far (dist::Comm::Traffic).
int64_t sp_traffic(const dist::Mesh& m) {
  int64_t b = 0;
  for (const dist::Comm* c : {&m.sp(), &m.ulysses(), &m.ring()}) b += c->traffic().sent_bytes + c->traffic().collective_bytes;
  return b;
}

}  // namespace

Trainer::Trainer(const Config& cfg, dist::Comm& world, dist::Comm& ctrl, RunResult& result, const RunHooks& hooks)
    : cfg_(cfg),
      world_(world),
      ctrl_(ctrl),
      result_(result),
      hooks_(hooks),
      metrics_(cfg.train.steps, cfg.logging.progress && !hooks.quiet) {
  validate_world(cfg_, world_.size());
  mesh_ = std::make_unique<dist::Mesh>(world_, mesh_shape(cfg_));
  layout_ = std::make_unique<dist::Layout>(config_layout(cfg_));
  shard_.dp = cfg_.parallel.dp;
  shard_.dp_rank = mesh_->coords().dp;
  shard_.positions = layout_->positions(mesh_->coords().sp);
  device_ = device_for(cfg_, world_.backend() == std::string_view("sim"), world_.rank());
  model_ = std::make_unique<Model>(cfg_, device_, *mesh_, *layout_);
  model_->init(static_cast<uint64_t>(cfg_.train.seed));
  if (cfg_.logging.profile && is_root()) {  // rank 0 reports; its waits on the others show in its phases
    profile_ = std::make_unique<StepProfile>(device_);
    model_->set_profile(profile_.get());
  }
  m_ = Tensor::zeros({model_->num_params()}, DType::f32, device_);
  v_ = Tensor::zeros({model_->num_params()}, DType::f32, device_);
  data_ = make_dataset(cfg_.data, cfg_.model.vocab_size, DataChecks{.eval_batches = cfg_.eval.batches});
  if (cfg_.eval.batches > 0 && cfg_.eval.seq_len > 0 && cfg_.eval.seq_len != cfg_.data.seq_len) {
    eval_length_ = std::make_unique<EvalLength>();
    EvalLength& e = *eval_length_;
    e.cfg = eval_length_config(cfg_);
    e.layout = std::make_unique<dist::Layout>(config_layout(e.cfg));
    e.shard = shard_;
    e.shard.positions = e.layout->positions(mesh_->coords().sp);
    e.model = std::make_unique<Model>(e.cfg, device_, *mesh_, *e.layout);
    e.data = make_dataset(e.cfg.data, e.cfg.model.vocab_size, DataChecks{.eval_batches = cfg_.eval.batches});
  }
  out_dir_ = cfg_.logging.out_dir;
  ckpt_dir_ = (fs::path(out_dir_) / "checkpoints").string();
}

void Trainer::run() {
  const auto t0 = Clock::now();
  on_root(ctrl_, [&] { prepare_out_dir(); });
  resume();
  saved_step_ = step_;
  on_root(ctrl_, [&] { metrics_.open((fs::path(out_dir_) / "metrics.jsonl").string(), step_); });
  if (is_root()) banner();

  const int64_t total = cfg_.train.steps;
  const char* nan_env = std::getenv(kInjectNanEnv);
  const int64_t inject_nan_at = nan_env ? std::atoll(nan_env) : -1;
  auto log_t = Clock::now();
  int64_t log_tokens = 0, log_sp_bytes = 0;
  double log_span = 0;  // sum over the logged steps of their attention span (MFU)
  int64_t log_step = step_;
  const auto run_t0 = Clock::now();
  const int64_t first_step = step_;
  bool stopped = false;
  while (step_ < total) {
    const double lr = learning_rate(cfg_, step_);
    Batch batch = next_batch(Split::train, consumed_);
    int64_t scored_global = batch.scored;
    ctrl_.all_reduce(std::span<int64_t>(&scored_global, 1), dist::ReduceOp::sum);
    model_->begin_step(step_);
    if (profile_) profile_->start(Phase::forward);
    const int64_t sp_before = sp_traffic(*mesh_);
    StepStats st = model_->forward_backward(batch, 1.0 / static_cast<double>(std::max<int64_t>(1, scored_global)));
    log_sp_bytes += sp_traffic(*mesh_) - sp_before;
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
    log_span += batch.documents ? batch.documents->attention_span() : static_cast<double>(cfg_.data.seq_len);

    if (is_root()) {
      result_.train.push_back(rec);
      const bool log_now = step_ % cfg_.logging.every == 0 || step_ == total || rec.skipped;
      if (log_now) {
        const double dt = seconds_since(log_t);
        const double tok_s = dt > 0 ? static_cast<double>(log_tokens) / dt : 0.0;
        const double per_step = seconds_since(run_t0) / static_cast<double>(step_ - first_step);
        TrainRecordInfo info;
        info.tokens_per_s = tok_s;
        info.mfu = mfu(tok_s, log_span / static_cast<double>(step_ - log_step));
        info.eta_s = per_step * static_cast<double>(total - step_);
        info.tokens = consumed_ * cfg_.data.seq_len;
        info.skipped_total = skipped_;
        info.sp_bytes = static_cast<double>(log_sp_bytes) / static_cast<double>(step_ - log_step);
        info.memory = memory_stats(device_);
        info.profile_ms = &profile_ms_;
        info.profile_steps = profile_steps_;
        metrics_.train(rec, info);
        profile_ms_ = {};
        profile_steps_ = 0;
        log_t = Clock::now();
        log_tokens = 0;
        log_sp_bytes = 0;
        log_span = 0;
        log_step = step_;
      }
      if (hooks_.after_step) hooks_.after_step(step_);
    }

    int32_t stop = pending_stop_signal();
    ctrl_.all_reduce(std::span<int32_t>(&stop, 1), dist::ReduceOp::max);
    const bool last = step_ == total;
    if (cfg_.eval.batches > 0 && (last || stop || (cfg_.eval.every > 0 && step_ % cfg_.eval.every == 0))) evaluate();
    if (stop || (last && cfg_.checkpoint.save_final) || (cfg_.checkpoint.every > 0 && step_ % cfg_.checkpoint.every == 0)) {
      save();
      saved_step_ = step_;
    }
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
    metrics_.flush();
  }
}

Batch Trainer::next_batch(Split split, int64_t first, const EvalLength* at) {
  Batch b;
  std::string err;
  try {
    b = at ? make_batch(*at->data, at->cfg.data, split, first, at->shard) : make_batch(*data_, cfg_.data, split, first, shard_);
  } catch (const Error& e) {
    err = e.what();
  }
  int32_t failed = err.empty() ? 0 : 1;
  ctrl_.all_reduce(std::span<int32_t>(&failed, 1), dist::ReduceOp::max);
  if (failed) {
    if (step_ > saved_step_) {
      save();
      saved_step_ = step_;
      if (is_root())
        std::cerr << "lctx-train: data error after step " << step_ << "; saved a checkpoint of step " << step_ << ": "
                  << result_.last_checkpoint << "\n";
    }
    throw_first_error(ctrl_, err);
  }
  return b;
}

void throw_first_error(dist::Comm& comm, const std::string& err) {
  int64_t from = err.empty() ? comm.size() : comm.rank();
  comm.all_reduce(std::span<int64_t>(&from, 1), dist::ReduceOp::min);
  if (from == comm.size()) return;
  const int root = static_cast<int>(from);
  int64_t len = static_cast<int64_t>(err.size());
  comm.broadcast(std::span<int64_t>(&len, 1), root);
  std::vector<int32_t> buf(err.begin(), err.end());  // the comms move typed elements, not chars
  buf.resize(static_cast<size_t>(len));
  comm.broadcast(std::span<int32_t>(buf.data(), buf.size()), root);
  std::string msg;
  for (int32_t c : buf) msg += static_cast<char>(c);
  throw Error(msg);
}

void Trainer::prepare_out_dir() {
  std::error_code ec;
  fs::create_directories(out_dir_, ec);
  LCTX_CHECK(!ec && fs::is_directory(out_dir_), "logging.out_dir '", out_dir_, "': cannot create the run directory (",
             ec ? ec.message() : "a file of that name exists", ")");
  std::ofstream f(fs::path(out_dir_) / "config.yaml");
  f << to_yaml(cfg_);
  LCTX_CHECK(f.good(), "logging.out_dir '", out_dir_, "': cannot write config.yaml");
}

void Trainer::banner() {
  if (hooks_.quiet) return;
  const auto& m = cfg_.model;
  std::ostringstream kinds;
  for (size_t i = 0; i < m.mixers.size(); ++i) kinds << (i ? "," : "") << m.mixers[i];
  std::cout << "lctx-train: " << model_->num_params() << " parameters (" << m.n_layers << " layers, dim " << m.dim
            << ", heads " << m.n_heads << "/" << m.kv_heads() << ", mixers " << kinds.str() << ", "
            << dtype_name(model_->compute_dtype()) << " on " << device_.str() << ")\n"
            << "lctx-train: " << world_.size() << " rank(s) [" << world_.backend() << "] dp " << cfg_.parallel.dp
            << " sp " << cfg_.parallel.sp << " (" << resolved_layout(cfg_) << "); data: " << data_->describe() << ", seq_len " << cfg_.data.seq_len
            << ", batch " << cfg_.data.batch_size << "; " << cfg_.train.steps << " steps -> " << out_dir_ << "\n";
  if (eval_length_)
    std::cout << "lctx-train: evaluation at eval.seq_len " << eval_length_->cfg.data.seq_len << " ("
              << static_cast<double>(eval_length_->cfg.data.seq_len) / static_cast<double>(cfg_.data.seq_len)
              << "x the training length)\n";
  if (step_ > 0) std::cout << "lctx-train: resumed from " << result_.resumed_from << " at step " << step_ << "\n";
  std::cout.flush();
}

// Model FLOPs utilisation per GPU: the model's training FLOPs per token (Model::flops_per_token
// at the attention span: seq_len, or for packed documents the length with as many attention
// pairs per token, attn::Documents::attention_span) times tokens/s over the configured peak of
// all GPUs. 0 on the CPU.
double Trainer::mfu(double tok_s, double attention_span) const {
  if (!device_.is_cuda()) return 0.0;
  return model_->flops_per_token(static_cast<int64_t>(std::llround(attention_span))) * tok_s /
         (static_cast<double>(world_.size()) * cfg_.logging.peak_tflops * 1e12);
}

void Trainer::apply_adamw(double lr) {
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
    a.weight_decay = p.decay == mixers::Decay::weight ? static_cast<float>(cfg_.optimizer.weight_decay) : 0.0f;
    Tensor param = model_->compute_dtype() == DType::f32 ? Tensor() : p.compute;
    ops::adamw_update(param, p.master, m, v, p.grad, a, adam_step_);
    off += n;
  }
}

void Trainer::evaluate() {
  Model* model = model_.get();
  if (eval_length_) {  // the trained weights into the model built at eval.seq_len
    model = eval_length_->model.get();
    model->flat_params().copy_from(model_->flat_params());
    model->sync_compute_weights();
  }
  model->begin_step(step_);
  StepStats tot;
  for (int64_t i = 0; i < cfg_.eval.batches; ++i) {
    Batch b = next_batch(Split::eval, i * cfg_.data.batch_size, eval_length_.get());
    const StepStats s = model->evaluate(b);
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
  metrics_.eval(r, consumed_ * cfg_.data.seq_len, static_cast<int64_t>(sums[2]));
}

}  // namespace lctx::train
