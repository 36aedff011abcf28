// Flash attention throughput on the GPU: bf16, B=1, TFLOP/s with the FlashAttention
// convention (forward 4*B*H*S*S*D, halved when causal; forward+backward = 3.5x forward),
// median of timed repetitions after warm-up, CUDA events. Every shape runs twice: on lctx's
// own kernels ("lctx-kernels") and with the automatic backend choice ("lctx-auto": cuDNN's
// fused attention where it supports the call). One line per shape and backend
// ("<impl> <shape> fwd <TFLOP/s> fwdbwd <TFLOP/s>") and the allocator's peak bytes of a
// forward+backward at S=64k to show O(S) memory. Optional arguments: repetitions, max S, min S.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "attn/flash.h"
#include "core/allocator.h"
#include "core/cuda_check.h"
#include "core/rng.h"

using namespace lctx;

namespace {

template <class F>
double median_ms(F&& f, int reps, int warmup) {
  cudaEvent_t a, b;
  LCTX_CUDA_CHECK(cudaEventCreate(&a));
  LCTX_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < warmup; ++i) f();
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    LCTX_CUDA_CHECK(cudaEventRecord(a));
    f();
    LCTX_CUDA_CHECK(cudaEventRecord(b));
    LCTX_CUDA_CHECK(cudaEventSynchronize(b));
    float t;
    LCTX_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  LCTX_CUDA_CHECK(cudaEventDestroy(a));
  LCTX_CUDA_CHECK(cudaEventDestroy(b));
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (!cuda_available()) {
    std::printf("bench_flash: no CUDA GPU\n");
    return 0;
  }
  const int reps = argc > 1 ? std::atoi(argv[1]) : 10;
  const int64_t max_s = argc > 2 ? std::atoll(argv[2]) : 65536;
  const int64_t min_s = argc > 3 ? std::atoll(argv[3]) : 0;
  cudaDeviceProp prop;
  LCTX_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s\n", prop.name);
  struct Shape {
    int64_t S;
    int H, D;
  };
  const Shape shapes[] = {{4096, 16, 128}, {16384, 16, 128}, {65536, 16, 128}, {16384, 32, 64}};
  const Device gpu = Device::cuda();
  for (const Shape& sh : shapes)
    for (bool causal : {false, true})
      for (attn::AttnBackend backend : {attn::AttnBackend::lctx, attn::AttnBackend::automatic}) {
      if (sh.S > max_s || sh.S < min_s) continue;
      Tensor q = Tensor::empty({1, sh.S, sh.H, sh.D}, DType::bf16, gpu);
      Tensor k = Tensor::empty(q.shape(), DType::bf16, gpu), v = Tensor::empty(q.shape(), DType::bf16, gpu);
      Tensor dout = Tensor::empty(q.shape(), DType::bf16, gpu);
      rng_normal(q, 1, 0);
      rng_normal(k, 2, 0);
      rng_normal(v, 3, 0);
      rng_normal(dout, 4, 0);
      attn::FlashOptions opts;
      opts.mask = causal ? attn::Mask::causal : attn::Mask::none;
      opts.backend = backend;
      const char* impl = backend == attn::AttnBackend::lctx ? "lctx-kernels" : "lctx-auto";
      const double flops = 4.0 * sh.H * double(sh.S) * double(sh.S) * sh.D / (causal ? 2 : 1);
      const int r = sh.S >= 65536 ? std::min(reps, 5) : reps, warmup = sh.S >= 65536 ? 1 : 2;  // S=64k runs take seconds
      const double fwd = median_ms([&] { attn::flash_forward(q, k, v, opts); }, r, warmup);
      reset_peak_memory(gpu);
      const size_t base = memory_stats(gpu).current_bytes;
      const double fb = median_ms(
          [&] {
            auto out = attn::flash_forward(q, k, v, opts);
            attn::flash_backward(q, k, v, out.o, out.lse, dout, opts);
          },
          r, warmup);
      const size_t peak = memory_stats(gpu).peak_bytes - base;
      std::printf("%s S=%lld H=%d D=%d %s fwd %.1f fwdbwd %.1f  (fwd %.3f ms, fwd+bwd %.3f ms, extra peak %.1f MiB)\n",
                  impl, static_cast<long long>(sh.S), sh.H, sh.D, causal ? "causal" : "full", flops / fwd * 1e-9,
                  3.5 * flops / fb * 1e-9, fwd, fb, peak / 1048576.0);
      if (sh.S == 65536)
        std::printf("memory %s S=%lld %s: q/k/v/dout %.1f MiB, extra peak in fwd+bwd %.1f MiB (O(S): no SxS buffer = %.1f GiB)\n",
                    impl, static_cast<long long>(sh.S), causal ? "causal" : "full", 4.0 * q.nbytes() / 1048576.0,
                    peak / 1048576.0, double(sh.S) * sh.S * sh.H * 2 / 1073741824.0);
    }
  return 0;
}
