// Sequence-parallel attention across GPUs (mpirun -np N, one GPU per rank, NcclComm): causal,
// B=1, H=16, D=128, bf16, total sequence S, in one or more modes: zigzag ring (reported as
// "lctx"), contiguous ring, Ulysses over N, hybrid (Ulysses 2 x zigzag ring N/2). For each S it
// measures (wall time, max over ranks, median of repetitions; forward and forward+backward
// taken from the same run):
//   t1     single-GPU attn::flash on the whole sequence (rank 0)
//   tn     the mode on N GPUs
//   nocomm the same with communication removed (sendrecv/all_to_all are local copies)
//   comm   ring modes: the ring's exchanges alone (same messages, no compute)
// and prints "RESULT impl=lctx[-mode] S=.. N=.. key=ms ..." lines; run_bench_ring.sh combines
// them with bench_ring_torch.py (PyTorch context_parallel) into one table: scaling efficiency
// t1 / (N * tn), fraction of communication hidden 1 - (tn - nocomm) / comm, and ratios.
// Packed documents (issue 22): each mode and t1 run again with the causal mask inside D
// documents of S/D tokens (doc ids sharded by the layout, FlashOptions::documents: the ring
// skips blocks and hops that share no document), "RESULT impl=lctx[-mode]-docs<D> ..." (no
// exchanges-alone figure: the ring's messages depend on the documents).
// Sliding window (issue 19; LCTX_BENCH_RING_WINDOW=W > 0): each mode and t1 again with a causal
// window of W keys, "RESULT impl=lctx[-mode]-window<W> ...": tn against nocomm is what the ring
// costs over the window's compute, and sent_mb the MB a rank sends per forward+backward
// (Comm::traffic, max over ranks), which the window keeps independent of N.
// LCTX_BENCH_RING_WINDOW_ONLY=1: the window variant alone (no causal and document runs).
// Arguments: [comma-separated S list] [repetitions] [time budget in seconds]
//            [comma-separated modes: zigzag (default), ring, ulysses, hybrid]
//            [documents D per sequence, default 64; 0: none]; --help.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "attn/flash.h"
#include "bench_documents.h"
#include "core/cuda_check.h"
#include "core/rng.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/mpi_comm.h"
#include "dist/nccl_comm.h"
#include "dist/ring_attention.h"
#include "dist/ulysses.h"

using namespace lctx;
using namespace lctx::dist;

namespace {

constexpr int kH = 16, kD = 128;

// The ring with its communication removed: every exchange is a copy of the send buffer into
// the receive buffer on the compute stream, so that the blocks compute on real values (on
// never-written buffers they ran up to 3% faster at S=512k, flattering the figure). The
// copies cost ~0.1% of the ring's time.
class NoComm final : public Comm {
 public:
  NoComm(int rank, int size) : Comm(rank, size, {}) {}
  std::string_view backend() const override { return "none"; }
  void barrier() override {}
  std::unique_ptr<Comm> split(int, int) override { LCTX_FAIL("NoComm::split"); }

 protected:
  Request isend_impl(const Buffer&, int, Stream) override { return {}; }
  Request irecv_impl(const Buffer&, int, Stream) override { return {}; }
  Request sendrecv_impl(const Buffer& send, int, const Buffer& recv, int, Stream s) override {
    local_copy(send, recv, s);
    return {};
  }
  void all_reduce_impl(const Buffer&, ReduceOp, Stream) override {}
  void all_gather_impl(const Buffer&, const Buffer&, Stream) override {}
  void reduce_scatter_impl(const Buffer&, const Buffer&, ReduceOp, Stream) override {}
  void all_to_all_impl(const Buffer& in, const Buffer& out, Stream s) override { local_copy(in, out, s); }
  void broadcast_impl(const Buffer&, int, Stream) override {}

 private:
  // What a self-exchange would move: the smaller of the two (halo messages differ in size).
  static void local_copy(const Buffer& from, const Buffer& to, Stream s) {
    const size_t n = std::min(from.count, to.count);
    if (n == 0) return;
    LCTX_CUDA_CHECK(cudaMemcpyAsync(to.data, from.data, n * dtype_size(to.dtype), cudaMemcpyDeviceToDevice,
                                    cuda_stream(s)));
  }
};

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double max_over_ranks(double v) {
  double m = v;
  LCTX_MPI_CHECK(MPI_Allreduce(&v, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return m;
}

// Median over reps of (forward ms, forward+backward ms); `run(fwd_done)` calls fwd_done()
// between its forward and backward, after synchronizing.
struct Timing {
  double fwd = 0, fb = 0;
};
Timing measure(int reps, Stream s, const std::function<void(const std::function<void()>&)>& run) {
  std::vector<double> f, fb;
  for (int i = 0; i < reps; ++i) {
    synchronize(s);
    LCTX_CUDA_CHECK(cudaDeviceSynchronize());
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = now_ms();
    double t1 = t0;
    run([&] {
      synchronize(s);
      t1 = now_ms();
    });
    synchronize(s);
    LCTX_CUDA_CHECK(cudaDeviceSynchronize());
    const double t2 = now_ms();
    f.push_back(max_over_ranks(t1 - t0));
    fb.push_back(max_over_ranks(t2 - t0));
  }
  std::sort(f.begin(), f.end());
  std::sort(fb.begin(), fb.end());
  return {f[f.size() / 2], fb[fb.size() / 2]};
}

// A sequence-parallel mode over all N ranks: zigzag (load-balanced ring, reported as "lctx"),
// ring (contiguous shards), ulysses (all-to-all over N, heads split N ways) or hybrid
// (Ulysses over 2 ranks inside, zigzag ring over N/2 outside).
struct ModeRun {
  std::string impl;
  LayoutKind kind = LayoutKind::zigzag;
  MeshShape shape;
  std::unique_ptr<Mesh> mesh;
  std::unique_ptr<Comm> no_ulysses, no_ring;

  ModeRun(const std::string& name, int n) {
    impl = name == "zigzag" ? "lctx" : "lctx-" + name;
    if (name == "zigzag") {
      shape.ring = n;
    } else if (name == "ring") {
      kind = LayoutKind::contiguous;
      shape.ring = n;
    } else if (name == "ulysses") {
      kind = LayoutKind::contiguous;
      shape.ulysses = n;
    } else if (name == "hybrid") {
      shape.ulysses = 2;
      shape.ring = n / 2;
    } else {
      LCTX_FAIL("bench_ring: unknown mode '", name, "' (zigzag, ring, ulysses, hybrid)");
    }
  }
};

int64_t parse_int(const std::string& s, const char* what) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < 0) {
    std::fprintf(stderr, "bench_ring: %s must be a non-negative integer, got '%s' (see --help)\n", what, s.c_str());
    std::exit(2);
  }
  return v;
}

std::vector<std::string> split(const char* s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) v.push_back(item);
  return v;
}

// The benchmark's causal options, masked by `docs` when given with `ids` the doc ids of the
// call's tokens (CPU, moved to `dev`).
attn::FlashOptions causal_options(const std::shared_ptr<const attn::Documents>& docs, const Tensor& ids, Device dev,
                                  int64_t window) {
  attn::FlashOptions opts;
  opts.mask = attn::Mask::causal;
  if (docs) bench::set_documents(opts, docs, ids.to(dev));
  if (window > 0) opts.window_left = window - 1;
  return opts;
}

// One masking of the benchmark: plain causal, causal inside documents, or a causal window.
struct Variant {
  std::shared_ptr<const attn::Documents> docs;
  int64_t window = 0;
  std::string suffix;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::printf("usage: mpirun -np N bench_ring [S list=131072,524288] [repetitions=3] [budget s=240]\n"
                "                             [modes=zigzag (also ring, ulysses, hybrid)] [documents=64]\n"
                "Causal attention over N GPUs (one per rank, NCCL), B=1 H=%d D=%d bf16: 1 GPU vs N GPUs,\n"
                "without communication and the exchanges alone; then the same inside `documents` equal\n"
                "documents per sequence (0: not run); with LCTX_BENCH_RING_WINDOW=W also a causal window of W\n"
                "keys. tests/bench/run_bench_ring.sh runs it next to PyTorch.\n",
                kH, kD);
    return 0;
  }
  std::vector<int64_t> seqs;
  for (const std::string& item : split(argc > 1 ? argv[1] : "131072,524288"))
    seqs.push_back(parse_int(item, "every S"));
  const int reps = static_cast<int>(std::max<int64_t>(1, parse_int(argc > 2 ? argv[2] : "3", "repetitions")));
  const double budget_s = static_cast<double>(parse_int(argc > 3 ? argv[3] : "240", "the budget"));
  const std::vector<std::string> modes = split(argc > 4 ? argv[4] : "zigzag");
  const int64_t n_docs = parse_int(argc > 5 ? argv[5] : "64", "documents");
  const char* window_env = std::getenv("LCTX_BENCH_RING_WINDOW");
  const int64_t window = window_env ? parse_int(window_env, "LCTX_BENCH_RING_WINDOW") : 0;
  const char* window_only_env = std::getenv("LCTX_BENCH_RING_WINDOW_ONLY");
  const bool window_only = window_only_env && std::string(window_only_env) == "1";
  for (int64_t S : seqs)
    if (n_docs > 0 && S % n_docs) {
      std::fprintf(stderr, "bench_ring: S=%lld is not a multiple of %lld documents\n", (long long)S, (long long)n_docs);
      return 2;
    }
  const int rank = mpi_init();
  auto world = MpiComm::world();
  const int N = world->size();
  if (cuda_device_count() < 1) {
    std::printf("bench_ring: no CUDA GPU\n");
    return 0;
  }
  const int dev_index = rank % cuda_device_count();
  LCTX_CUDA_CHECK(cudaSetDevice(dev_index));
  const Device dev = Device::cuda(dev_index);
  cudaDeviceProp prop;
  LCTX_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev_index));
  if (rank == 0) std::printf("device %s x %d (one per rank), NCCL ring, bf16 causal B=1 H=%d D=%d\n", prop.name, N, kH, kD);
  NcclComm nccl(*world, dev_index);
  cudaStream_t st;
  LCTX_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const Stream s{st};

  // Each mode on its mesh, with the same groups made of NoComm for the run without communication.
  std::vector<std::unique_ptr<ModeRun>> runs;
  for (const std::string& name : modes) {
    auto m = std::make_unique<ModeRun>(name, N);
    if (m->shape.world() != N || kH % m->shape.ulysses) {
      if (rank == 0) std::printf("SKIP mode=%s: needs N even and H=%d divisible by the Ulysses degree\n", name.c_str(), kH);
      continue;
    }
    m->mesh = std::make_unique<Mesh>(nccl, m->shape);
    const MeshCoords c = m->mesh->coords();
    m->no_ulysses = std::make_unique<NoComm>(c.ulysses, m->shape.ulysses);
    m->no_ring = std::make_unique<NoComm>(c.ring, m->shape.ring);
    runs.push_back(std::move(m));
  }

  const double start = now_ms();
  double scale_from = 0, t_at = 0;  // one timed run of everything at the previous size (s)
  for (int64_t S : seqs) {
    if (scale_from > 0) {
      const double est = t_at * (double(S) / scale_from) * (double(S) / scale_from);
      const double left = budget_s - (now_ms() - start) / 1000;
      if (max_over_ranks(est) > left) {
        if (rank == 0) std::printf("SKIP S=%lld: estimated %.0f s > %.0f s left of the budget\n", (long long)S, est, left);
        continue;
      }
    }
    const int r = S >= 262144 ? 1 : reps;  // the long sequences: one timed run (after warm-up at the short ones)
    const int warm_causal = S >= 262144 ? 0 : 1;
    double total_ms = 0;
    // Causal, then (n_docs > 0) causal inside n_docs equal documents, then (window > 0) a window.
    std::vector<Variant> variants;
    if (!(window > 0 && window_only)) variants.push_back({});
    if (n_docs > 0)
      variants.push_back({bench::one_row(S, bench::equal_starts(S, n_docs)), 0, "-docs" + std::to_string(n_docs)});
    if (window > 0) variants.push_back({nullptr, window, "-window" + std::to_string(window)});
    for (const Variant& var : variants) {
      // A window is cheap to run twice: always warmed up (cuDNN builds a plan per new shape,
      // which would land in whichever of tn / nocomm runs first).
      const int warm = var.window > 0 ? 1 : warm_causal;
      const auto& docs = var.docs;
      const std::string& suffix = var.suffix;
      const Tensor ids = docs ? bench::ids_tensor(*docs) : Tensor();  // CPU [1, S]
      // Single GPU: rank 0 computes the whole sequence, the others wait.
      Timing t1;
      {
        const attn::FlashOptions opts = causal_options(docs, ids, dev, var.window);
        Tensor Q, K, V, DO;
        if (rank == 0) {
          Q = Tensor::empty({1, S, kH, kD}, DType::bf16, dev);
          K = Tensor::empty({1, S, kH, kD}, DType::bf16, dev);
          V = Tensor::empty({1, S, kH, kD}, DType::bf16, dev);
          DO = Tensor::empty({1, S, kH, kD}, DType::bf16, dev);
          for (Tensor* t : {&Q, &K, &V, &DO}) rng_normal(*t, 5, 0, 0, 1, s);
        }
        auto one = [&](const std::function<void()>& fwd_done) {
          if (rank != 0) return fwd_done();
          auto f = attn::flash_forward(Q, K, V, opts, s);
          fwd_done();
          attn::flash_backward(Q, K, V, f.o, f.lse, DO, opts, attn::GradMode::overwrite, {}, s);
        };
        if (warm) measure(warm, s, one);
        t1 = measure(r, s, one);
      }
      total_ms += t1.fb;
      for (const auto& m : runs) {
        const Layout layout(m->kind, S, m->shape.ring, m->shape.ulysses);
        const attn::FlashOptions opts =
            causal_options(docs, docs ? layout.shard(ids, m->mesh->coords().sp) : Tensor(), dev, var.window);
        const int64_t L = layout.local_len();
        const Shape shape{1, L, kH, kD};
        Tensor q = Tensor::empty(shape, DType::bf16, dev), k = Tensor::empty(shape, DType::bf16, dev),
               v = Tensor::empty(shape, DType::bf16, dev), dout = Tensor::empty(shape, DType::bf16, dev);
        rng_normal(q, 1, rank * 4 * L * kH * kD, 0, 1, s);
        rng_normal(k, 2, rank * 4 * L * kH * kD, 0, 1, s);
        rng_normal(v, 3, rank * 4 * L * kH * kD, 0, 1, s);
        rng_normal(dout, 4, rank * 4 * L * kH * kD, 0, 1, s);
        auto sp_run = [&](Comm& uly, Comm& ring) {
          return [&](const std::function<void()>& fwd_done) {
            if (m->shape.ulysses == 1) {
              auto f = ring_attention_forward(ring, layout, q, k, v, opts, RingMode::ring, s);
              fwd_done();
              ring_attention_backward(ring, layout, q, k, v, f.o, f.lse, dout, opts, RingMode::ring,
                                      attn::OutputDType::input, s);
            } else {
              auto f = ulysses_attention_forward(uly, ring, layout, q, k, v, opts, RingMode::ring, s);
              fwd_done();
              ulysses_attention_backward(uly, ring, layout, q, k, v, f.o, f.lse, dout, opts, RingMode::ring, s);
            }
          };
        };
        if (warm) measure(warm, s, sp_run(m->mesh->ulysses(), m->mesh->ring()));
        m->mesh->ulysses().reset_traffic();
        m->mesh->ring().reset_traffic();
        const Timing tn = measure(r, s, sp_run(m->mesh->ulysses(), m->mesh->ring()));
        const double sent_mb = max_over_ranks(static_cast<double>(m->mesh->ulysses().traffic().sent_bytes +
                                                                  m->mesh->ring().traffic().sent_bytes) /
                                              r / 1e6);
        const Timing tnc = measure(r, s, sp_run(*m->no_ulysses, *m->no_ring));
        // Ring modes without documents: the exchanges alone. Forward R-1 K/V hops; backward R-1
        // K/V hops and R-1 dK/dV hops (the last one returns them to their owner): fp32, or bf16
        // when that is one hop (2 ranks: one rank's gradient, see ring_attention.h).
        Timing tc;
        if (m->shape.ulysses == 1 && !docs && var.window == 0) {
          Tensor kv = Tensor::empty({2, 1, L, kH, kD}, DType::bf16, dev), kv2 = Tensor::empty(kv.shape(), DType::bf16, dev);
          const DType gdt = N == 2 ? DType::bf16 : DType::f32;
          Tensor dkv = Tensor::empty(kv.shape(), gdt, dev), dkv2 = Tensor::empty(kv.shape(), gdt, dev);
          const int next = (rank + 1) % N, prev = (rank + N - 1) % N;
          auto comm_only = [&](const std::function<void()>& fwd_done) {
            for (int h = 1; h < N; ++h) nccl.sendrecv(kv, next, kv2, prev, s).wait(s);
            fwd_done();
            for (int h = 1; h < N; ++h) {
              nccl.sendrecv(kv, next, kv2, prev, s).wait(s);
              nccl.sendrecv(dkv, next, dkv2, prev, s).wait(s);
            }
          };
          measure(1, s, comm_only);
          tc = measure(std::max(r, 3), s, comm_only);
        }
        if (rank == 0) {
          std::printf(
              "RESULT impl=%s%s S=%lld N=%d docs=%lld window=%lld t1_fwd=%.3f t1_fb=%.3f tn_fwd=%.3f tn_fb=%.3f "
              "nocomm_fwd=%.3f nocomm_fb=%.3f comm_fwd=%.3f comm_fb=%.3f sent_mb=%.3f\n",
              m->impl.c_str(), suffix.c_str(), (long long)S, N, docs ? (long long)n_docs : 0LL, (long long)var.window,
              t1.fwd, t1.fb, tn.fwd, tn.fb, tnc.fwd, tnc.fb, tc.fwd, tc.fb, sent_mb);
          std::fflush(stdout);
        }
        total_ms += tn.fb + tnc.fb + tc.fb;
      }
    }
    scale_from = double(S);
    t_at = total_ms / 1000;
  }
  cudaStreamDestroy(st);
  return 0;
}
