// Flash attention throughput on the GPU: bf16, B=1, median of timed repetitions after warm-up,
// CUDA events. Every call runs twice: on lctx's own kernels ("lctx-kernels") and with the
// automatic backend choice ("lctx-auto": cuDNN's fused attention where it supports the call).
//
// Shapes (full and causal, S = 4k..64k): "<impl> <shape> fwd <TFLOP/s> fwdbwd <TFLOP/s> (...)"
// with the FlashAttention convention (forward 4*B*H*S*S*D, halved when causal; forward+backward
// = 3.5x forward), and the allocator's peak bytes of a forward+backward at S=64k (O(S) memory).
//
// Masks (issue 22; bench_flash_torch.py runs the same on FlexAttention and cuDNN SDPA), S = 16k
// and 64k, H=16, D=128, all causal:
//   causal        plain causal
//   docs16        16 documents of S/16 (doc ids [1, S] and FlashOptions::documents)
//   docs16-rand   16 documents of random lengths, mean S/16 (fixed seed; cuts at any position)
//   alibi         ALiBi, slopes 2^(-8(h+1)/H)
//   window4096    sliding window: each query sees itself and the 4095 keys before it
// "case <case> S=<S> <impl>: fwd <ms> ms, fwd+bwd <ms> ms | ..." with TFLOP/s counted on the
// visible pairs only (4*D*H FLOP per pair forward, 3.5x that forward+backward; a causal block
// of L tokens has L^2/2 pairs: documents sum that over the documents, a window W has
// S*W - W^2/2) and tokens/s.
// Arguments: [repetitions=10] [max S=65536] [min S=0]; S=64k runs at most 5 repetitions.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_timing.h"
#include "attn/flash.h"
#include "bench_documents.h"
#include "core/allocator.h"
#include "core/cuda_check.h"
#include "core/rng.h"

using namespace lctx;
using bench::median_ms;

namespace {

constexpr int64_t kDocs = 16, kWindow = 4096;
constexpr uint64_t kDocSeed = 22;  // bench_flash_torch.py draws with the same seed

struct Inputs {
  Tensor q, k, v, dout;
};

Inputs random_inputs(int64_t S, int H, int D, Device gpu) {
  Inputs in;
  uint64_t seed = 1;
  for (Tensor* t : {&in.q, &in.k, &in.v, &in.dout}) {
    *t = Tensor::empty({1, S, H, D}, DType::bf16, gpu);
    rng_normal(*t, seed++, 0);
  }
  return in;
}

struct Timing {
  double fwd_ms = 0, fb_ms = 0;
  double extra_peak_mib = 0;  // allocator peak above the inputs during a forward+backward
};

// Median times of a forward and of a forward+backward (S=64k runs take seconds: at most 5
// repetitions and one warm-up there).
Timing time_attention(const Inputs& in, const attn::FlashOptions& opts, int reps) {
  const bool long_seq = in.q.size(1) >= 65536;
  const int r = long_seq ? std::min(reps, 5) : reps, warmup = long_seq ? 1 : 2;
  const Device gpu = in.q.device();
  Timing t;
  t.fwd_ms = median_ms([&] { attn::flash_forward(in.q, in.k, in.v, opts); }, r, warmup);
  reset_peak_memory(gpu);
  const size_t base = memory_stats(gpu).current_bytes;
  t.fb_ms = median_ms(
      [&] {
        auto out = attn::flash_forward(in.q, in.k, in.v, opts);
        attn::flash_backward(in.q, in.k, in.v, out.o, out.lse, in.dout, opts);
      },
      r, warmup);
  t.extra_peak_mib = (memory_stats(gpu).peak_bytes - base) / 1048576.0;
  return t;
}

constexpr attn::AttnBackend kBackends[] = {attn::AttnBackend::lctx, attn::AttnBackend::automatic};
const char* impl_name(attn::AttnBackend b) { return b == attn::AttnBackend::lctx ? "lctx-kernels" : "lctx-auto"; }

void bench_shapes(int reps, int64_t min_s, int64_t max_s, Device gpu) {
  struct Shape {
    int64_t S;
    int H, D;
  };
  const Shape shapes[] = {{4096, 16, 128}, {16384, 16, 128}, {65536, 16, 128}, {16384, 32, 64}};
  for (const Shape& sh : shapes) {
    if (sh.S > max_s || sh.S < min_s) continue;
    const Inputs in = random_inputs(sh.S, sh.H, sh.D, gpu);
    for (bool causal : {false, true})
      for (attn::AttnBackend backend : kBackends) {
        attn::FlashOptions opts;
        opts.mask = causal ? attn::Mask::causal : attn::Mask::none;
        opts.backend = backend;
        const double flops = 4.0 * sh.H * double(sh.S) * double(sh.S) * sh.D / (causal ? 2 : 1);
        const Timing t = time_attention(in, opts, reps);
        const char* mask = causal ? "causal" : "full";
        std::printf("%s S=%lld H=%d D=%d %s fwd %.1f fwdbwd %.1f  (fwd %.3f ms, fwd+bwd %.3f ms, extra peak %.1f MiB)\n",
                    impl_name(backend), static_cast<long long>(sh.S), sh.H, sh.D, mask, flops / t.fwd_ms * 1e-9,
                    3.5 * flops / t.fb_ms * 1e-9, t.fwd_ms, t.fb_ms, t.extra_peak_mib);
        if (sh.S == 65536)
          std::printf("memory %s S=%lld %s: q/k/v/dout %.1f MiB, extra peak in fwd+bwd %.1f MiB (O(S): no SxS buffer = %.1f GiB)\n",
                      impl_name(backend), static_cast<long long>(sh.S), mask, 4.0 * in.q.nbytes() / 1048576.0,
                      t.extra_peak_mib, double(sh.S) * sh.S * sh.H * 2 / 1073741824.0);
        std::fflush(stdout);
      }
  }
}

struct MaskCase {
  std::string name;
  attn::FlashOptions opts;  // backend set per run
  double pairs;             // visible (query, key) pairs, causal blocks counted L^2/2
};

std::vector<MaskCase> mask_cases(int64_t S, int H, Device gpu) {
  attn::FlashOptions causal;
  causal.mask = attn::Mask::causal;
  const double half = double(S) * double(S) / 2;
  std::vector<MaskCase> cases{{"causal", causal, half}};
  for (bool random : {false, true}) {
    std::vector<int64_t> starts = random ? bench::random_starts(S, kDocs, kDocSeed) : bench::equal_starts(S, kDocs);
    if (random) std::printf("documents S=%lld random lengths %s\n", static_cast<long long>(S), bench::lengths_str(starts, S).c_str());
    MaskCase c{random ? "docs16-rand" : "docs16", causal, bench::causal_pairs(starts, S)};
    auto docs = bench::one_row(S, std::move(starts));
    bench::set_documents(c.opts, docs, bench::ids_tensor(*docs).to(gpu));
    cases.push_back(std::move(c));
  }
  std::vector<double> slopes;
  for (int h = 0; h < H; ++h) slopes.push_back(std::pow(2.0, -8.0 * (h + 1) / H));
  MaskCase alibi{"alibi", causal, half};
  alibi.opts.alibi_slopes = Tensor::from_vector({H}, slopes, DType::f32).to(gpu);
  cases.push_back(std::move(alibi));
  MaskCase window{"window" + std::to_string(kWindow), causal, double(S) * kWindow - double(kWindow) * kWindow / 2};
  window.opts.window_left = kWindow - 1;
  cases.push_back(std::move(window));
  return cases;
}

void bench_masks(int reps, int64_t min_s, int64_t max_s, Device gpu) {
  constexpr int H = 16, D = 128;
  for (int64_t S : {int64_t{16384}, int64_t{65536}}) {
    if (S > max_s || S < min_s) continue;
    const Inputs in = random_inputs(S, H, D, gpu);
    for (MaskCase& c : mask_cases(S, H, gpu))
      for (attn::AttnBackend backend : kBackends) {
        c.opts.backend = backend;
        const Timing t = time_attention(in, c.opts, reps);
        const double flops = 4.0 * D * H * c.pairs;
        std::printf("case %s S=%lld %s: fwd %.3f ms, fwd+bwd %.3f ms | %.1f / %.1f TFLOP/s on %.3g visible pairs | "
                    "%.2f / %.2f Mtok/s\n",
                    c.name.c_str(), static_cast<long long>(S), impl_name(backend), t.fwd_ms, t.fb_ms,
                    flops / t.fwd_ms * 1e-9, 3.5 * flops / t.fb_ms * 1e-9, c.pairs, S / t.fwd_ms * 1e-3,
                    S / t.fb_ms * 1e-3);
        std::fflush(stdout);
      }
  }
}

int64_t parse_arg(int argc, char** argv, int i, int64_t fallback) {
  if (argc <= i) return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(argv[i], &end, 10);
  if (*argv[i] == '\0' || *end != '\0' || v < 0) {
    std::fprintf(stderr, "bench_flash: argument %d ('%s') must be a non-negative integer (see --help)\n", i, argv[i]);
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::printf("usage: bench_flash [repetitions=10] [max S=65536] [min S=0]\n"
                "Flash attention fwd and fwd+bwd on one GPU, lctx's kernels and the automatic backend:\n"
                "full/causal shapes (TFLOP/s), then the mask cases at S=16k and 64k (causal, 16 documents\n"
                "of equal and of random lengths, ALiBi, window 4096; ms, TFLOP/s on visible pairs, tokens/s).\n"
                "tests/bench/run_bench_flash.sh runs it next to PyTorch (bench_flash_torch.py).\n");
    return 0;
  }
  const int reps = static_cast<int>(std::max<int64_t>(1, parse_arg(argc, argv, 1, 10)));
  const int64_t max_s = parse_arg(argc, argv, 2, 65536);
  const int64_t min_s = parse_arg(argc, argv, 3, 0);
  if (!cuda_available()) {
    std::printf("bench_flash: no CUDA GPU\n");
    return 0;
  }
  cudaDeviceProp prop;
  LCTX_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s\n", prop.name);
  const Device gpu = Device::cuda();
  bench_shapes(reps, min_s, max_s, gpu);
  bench_masks(reps, min_s, max_s, gpu);
  return 0;
}
