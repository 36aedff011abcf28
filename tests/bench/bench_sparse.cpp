// Sparse attention throughput on the GPU (issue 19): bf16, B=1, H=16, D=128, S = 16k and 64k,
// median of CUDA-event-timed repetitions after warm-up (as bench_flash). Cases:
//   causal            dense causal flash on lctx's kernels: the reference point
//   window4096        sliding window of 4096 keys (causal) as a block mask: a plain window runs
//                     as the flash window rule, under the automatic backend ("lctx-mask": cuDNN's
//                     band) and on lctx's kernels ("lctx-kernels")
//   window4096+g64    window 4096 + the first 64 positions seen by every later query: block
//                     mask ("lctx-mask": tile lists on lctx's kernels) and strided_attention's split ("lctx-split": window
//                     flash + global-key flash merged by LSE, automatic backend)
//   strided1024/64    window 1024 + every 64th key: strided_attention ("lctx-split": window
//                     flash + residue flash merged by LSE) and the block mask ("lctx-mask")
// "case <case> S=<S> <impl>: fwd <ms> ms, fwd+bwd <ms> ms | <fwd> / <fwd+bwd> TFLOP/s on <n>
// visible pairs | extra peak <MiB>": FLOPs counted on the visible pairs only (4*D*H per pair
// forward, 3.5x forward+backward; causal S^2/2 as bench_flash). bench_sparse_torch.py prints
// FlexAttention's lines for the same cases; run_bench_sparse.sh tabulates both with ratios.
// Arguments: [repetitions=10] [max S=65536] [min S=0]; S=64k runs at most 5 repetitions.
// LCTX_BENCH_CASE=<text>: only the cases whose "<case> <impl>" contains it (e.g. to profile one).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_timing.h"
#include "attn/block_mask.h"
#include "attn/flash.h"
#include "attn/strided_attention.h"
#include "core/allocator.h"
#include "core/cuda_check.h"
#include "core/rng.h"

using namespace lctx;
using bench::median_ms;

namespace {

constexpr int64_t kWindow = 4096, kGlobal = 64, kStrideWindow = 1024, kStride = 64;
constexpr int kH = 16, kD = 128;

// Visible pairs of query i: the window, plus keys j < g outside it, plus strided keys outside it.
double count_pairs(int64_t S, int64_t w, int64_t g, int64_t s) {
  double n = 0;
  for (int64_t i = 0; i < S; ++i) {
    n += std::min(i + 1, w);
    if (g > 0) n += std::max<int64_t>(0, std::min(g, i - w + 1));
    if (s > 0) n += std::max<int64_t>(0, i / s - (w + s - 1) / s + 1);
  }
  return n;
}

using Fwd = std::function<attn::FlashOutput()>;
using Bwd = std::function<void(const attn::FlashOutput&)>;

void report(const char* name, int64_t S, const char* impl, double pairs, const Fwd& fwd, const Bwd& bwd, int reps) {
  const char* only = std::getenv("LCTX_BENCH_CASE");
  if (only && (std::string(name) + " " + impl).find(only) == std::string::npos) return;
  const bool long_seq = S >= 65536;
  const int r = long_seq ? std::min(reps, 5) : reps, warmup = long_seq ? 1 : 2;
  const Device gpu = Device::cuda();
  const double f_ms = median_ms([&] { fwd(); }, r, warmup);
  reset_peak_memory(gpu);
  const size_t base = memory_stats(gpu).current_bytes;
  const double fb_ms = median_ms([&] { bwd(fwd()); }, r, warmup);
  const double peak = (memory_stats(gpu).peak_bytes - base) / 1048576.0;
  const double flops = 4.0 * kD * kH * pairs;
  std::printf("case %s S=%lld %s: fwd %.3f ms, fwd+bwd %.3f ms | %.1f / %.1f TFLOP/s on %.4g visible pairs | "
              "extra peak %.1f MiB\n",
              name, static_cast<long long>(S), impl, f_ms, fb_ms, flops / f_ms * 1e-9, 3.5 * flops / fb_ms * 1e-9,
              pairs, peak);
  std::fflush(stdout);
}

void run_all(int reps, int64_t min_s, int64_t max_s) {
  const Device gpu = Device::cuda();
  for (int64_t S : {int64_t{16384}, int64_t{65536}}) {
    if (S > max_s || S < min_s) continue;
    Tensor q = Tensor::empty({1, S, kH, kD}, DType::bf16, gpu), k = Tensor::empty(q.shape(), DType::bf16, gpu),
           v = Tensor::empty(q.shape(), DType::bf16, gpu), dout = Tensor::empty(q.shape(), DType::bf16, gpu);
    uint64_t seed = 1;
    for (Tensor* t : {&q, &k, &v, &dout}) rng_normal(*t, seed++, 0);
    auto flash_case = [&](const char* name, const char* impl, double pairs, const attn::FlashOptions& o) {
      report(name, S, impl, pairs, [&] { return attn::flash_forward(q, k, v, o); },
             [&](const attn::FlashOutput& out) { attn::flash_backward(q, k, v, out.o, out.lse, dout, o); }, reps);
    };
    attn::FlashOptions causal;
    causal.mask = attn::Mask::causal;
    causal.backend = attn::AttnBackend::lctx;
    flash_case("causal", "lctx-kernels", double(S) * double(S) / 2, causal);

    const double window_pairs = count_pairs(S, kWindow, 0, 0);
    attn::FlashOptions mask;
    mask.block_mask = attn::window_block_mask(S, kWindow);
    flash_case("window4096", "lctx-mask", window_pairs, mask);
    attn::FlashOptions mask_kernels = mask;
    mask_kernels.backend = attn::AttnBackend::lctx;
    flash_case("window4096", "lctx-kernels", window_pairs, mask_kernels);
    auto split_case = [&](const char* name, double pairs, const attn::StridedOptions& so) {
      report(name, S, "lctx-split", pairs, [&] { return attn::strided_attention_forward(q, k, v, so); },
             [&](const attn::FlashOutput& out) { attn::strided_attention_backward(q, k, v, out.o, out.lse, dout, so); },
             reps);
    };

    const double global_pairs = count_pairs(S, kWindow, kGlobal, 0);
    mask.block_mask = attn::block_mask_union(*attn::window_block_mask(S, kWindow), *attn::global_block_mask(S, kGlobal));
    flash_case("window4096+g64", "lctx-mask", global_pairs, mask);
    split_case("window4096+g64", global_pairs, {.window = kWindow, .n_global = kGlobal});

    const double strided_pairs = count_pairs(S, kStrideWindow, 0, kStride);
    split_case("strided1024/64", strided_pairs, {.window = kStrideWindow, .stride = kStride});
    mask.block_mask = attn::strided_block_mask(S, kStrideWindow, kStride);
    flash_case("strided1024/64", "lctx-mask", strided_pairs, mask);
  }
}

int64_t parse_arg(int argc, char** argv, int i, int64_t fallback) {
  if (argc <= i) return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(argv[i], &end, 10);
  if (*argv[i] == '\0' || *end != '\0' || v < 0) {
    std::fprintf(stderr, "bench_sparse: argument %d ('%s') must be a non-negative integer\n", i, argv[i]);
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::printf("usage: bench_sparse [repetitions=10] [max S=65536] [min S=0]\n"
                "Sparse attention (block masks, strided attention) fwd and fwd+bwd at S=16k and 64k next to\n"
                "lctx's dense causal flash; tests/bench/run_bench_sparse.sh adds FlexAttention.\n");
    return 0;
  }
  const int reps = static_cast<int>(std::max<int64_t>(1, parse_arg(argc, argv, 1, 10)));
  const int64_t max_s = parse_arg(argc, argv, 2, 65536), min_s = parse_arg(argc, argv, 3, 0);
  if (!cuda_available()) {
    std::printf("bench_sparse: no CUDA GPU\n");
    return 0;
  }
  cudaDeviceProp prop;
  LCTX_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s\n", prop.name);
  run_all(reps, min_s, max_s);
  return 0;
}
