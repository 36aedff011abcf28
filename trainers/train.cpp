#include "trainers/train.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <thread>

#include "dist/mpi_comm.h"
#include "dist/nccl_comm.h"
#include "dist/sim_comm.h"
#include "trainers/memory_estimate.h"
#include "trainers/trainer.h"

namespace lctx::train {

namespace {

std::atomic<int> g_stop_signal{0};

void on_signal(int sig) { g_stop_signal.store(sig); }

// This process's rank on its node (from the launcher's environment), else `fallback`.
int local_rank(int fallback) {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return fallback;
}

// Ranks of this job on this node (from the launcher's environment), else 1.
int ranks_on_node() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"})
    if (const char* v = std::getenv(var); v && std::atoi(v) > 0) return std::atoi(v);
  return 1;
}

// OpenMP threads of each rank: train.threads, else OMP_NUM_THREADS when set, else the cores
// shared by the ranks on this node (threads of this process, or processes of this node).
int threads_per_rank(const Config& cfg, int ranks_in_process) {
  if (cfg.train.threads > 0) return static_cast<int>(cfg.train.threads);
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env && std::atoi(env) > 0)
    return std::max(1, std::atoi(env) / std::max(1, ranks_in_process));
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, hw / std::max(1, ranks_on_node() * ranks_in_process));
}

// Before any rank starts: the memory `ranks` ranks need on `device` (memory_estimate.h) and
// the OpenMP threads asked for (train.threads beyond 4 per hardware thread only oversubscribes,
// and under a memory limit libgomp cannot create them).
void check_resources(const Config& cfg, Device device, int ranks, Ranks kind) {
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  LCTX_CHECK(cfg.train.threads <= 4 * hw, "config: train.threads (", cfg.train.threads, ") is more than 4 per hardware ",
             "thread of this machine (", hw, "); use 0 (the cores shared by the ranks) or at most ", 4 * hw);
  check_memory(cfg, device, ranks, kind);
}

}  // namespace

int pending_stop_signal() { return g_stop_signal.load(); }

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

double learning_rate(const Config& cfg, int64_t step) {
  const auto& o = cfg.optimizer;
  const int64_t total = o.decay_steps > 0 ? o.decay_steps : cfg.train.steps;
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
    check_resources(cfg, device_for(cfg, true, 0), n, Ranks::simulated);
    dist::run_simulated(n, [&](dist::Comm& c) { body(c, c, n); });
  } else if (backend == "nccl" || (backend == "auto" && multi_process && device_for(cfg, false, 0).is_cuda())) {
#ifdef LCTX_HAVE_CUDA
    auto boot = dist::MpiComm::world();
    const Device dev = device_for(cfg, false, boot->rank());
    LCTX_CHECK(dev.is_cuda(), "parallel.backend = nccl needs GPUs (train.device resolved to cpu)");
    check_resources(cfg, dev, 1, Ranks::real);
    dist::NcclComm nccl(*boot, dev.index);
    body(nccl, *boot, 1);
#else
    LCTX_FAIL("parallel.backend = nccl needs lctx built with CUDA (LCTX_CUDA=ON)");
#endif
  } else if (backend == "mpi" || (backend == "auto" && multi_process)) {
    auto world = dist::MpiComm::world();
    check_resources(cfg, device_for(cfg, false, world->rank()), ranks_on_node(), Ranks::real);
    body(*world, *world, 1);
  } else {
    validate_world(cfg, 1);
    check_resources(cfg, device_for(cfg, false, 0), 1, Ranks::real);
    dist::run_simulated(1, [&](dist::Comm& c) { body(c, c, 1); });
  }
  return result;
}

}  // namespace lctx::train
