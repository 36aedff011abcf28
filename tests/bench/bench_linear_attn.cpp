// Chunked causal linear attention on the GPU (issue 17): B=1, H=16, D=128 (Dk = Dv), bf16, no
// normalisation, scale 1 (fla's workload with scale=1.0, normalize=False), median of CUDA-event
// timed repetitions after warm-up. Cases:
//   none    no decay            (fla chunk_linear_attn)
//   fixed   retention's per-head decay, log(1 - 2^(-5-h))   (fla chunk_retention)
//   softmax lctx's causal flash attention at the same T (the crossover)
// Each line: "lctx <case> T=<T> fwd <ms> fwdbwd <ms> | <Mtok/s fwd> <Mtok/s fwd+bwd> | <GB/s fwd>
// <GB/s fwd+bwd>" with the bytes a fused kernel must move at least: q, k, v read and o written
// forward (4 T H D x 2 bytes); forward + backward adds q, k, v, dout read and dq, dk, dv written
// (11 T H D x 2 bytes in all); final states are small. Plus the allocator's peak above the inputs.
// Arguments: [repetitions=10] [max T=131072]; T >= 1M runs 3 repetitions and no softmax.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_timing.h"
#include "attn/flash.h"
#include "core/allocator.h"
#include "core/cuda_check.h"
#include "core/rng.h"
#include "linear_attn/linear_attn.h"

using namespace lctx;
using bench::median_ms;

namespace {

constexpr int kH = 16, kD = 128;

void report(const char* impl, const char* what, int64_t T, double fwd, double fb, double peak_mib) {
  const double elems = static_cast<double>(T) * kH * kD, bytes_f = 4 * elems * 2, bytes_fb = 11 * elems * 2;
  std::printf("%s %s T=%lld fwd %.3f fwdbwd %.3f | Mtok/s %.1f %.1f | GB/s %.0f %.0f | extra peak %.0f MiB\n", impl,
              what, static_cast<long long>(T), fwd, fb, T / fwd * 1e-3, T / fb * 1e-3, bytes_f / fwd * 1e-6,
              bytes_fb / fb * 1e-6, peak_mib);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 10;
  const int64_t max_t = argc > 2 ? std::atoll(argv[2]) : 131072;
  const Device gpu = Device::cuda();
  for (int64_t T : {8192LL, 32768LL, 131072LL, 1048576LL}) {
    if (T > max_t) break;
    const int r = T >= 1048576 ? std::min(reps, 3) : reps, warm = T >= 1048576 ? 1 : 2;
    Tensor q = Tensor::empty({1, T, kH, kD}, DType::bf16, gpu), k = Tensor::empty({1, T, kH, kD}, DType::bf16, gpu);
    Tensor v = Tensor::empty({1, T, kH, kD}, DType::bf16, gpu), dout = Tensor::empty({1, T, kH, kD}, DType::bf16, gpu);
    uint64_t seed = 1;
    // Features of a small norm (like fla's benchmark inputs) keep the undecayed sums in range.
    for (Tensor* t : {&q, &k, &v, &dout}) rng_normal(*t, seed++, 0, 0.0, t == &q || t == &k ? 0.05 : 1.0);
    std::vector<float> g(kH);
    for (int h = 0; h < kH; ++h) g[h] = static_cast<float>(std::log(1.0 - std::pow(2.0, -5.0 - h)));
    const Tensor log_decay = Tensor::from_vector({kH}, std::vector<double>(g.begin(), g.end()), DType::f32).to(gpu);
    for (const char* what : {"none", "fixed"}) {
      const bool fixed = what[0] == 'f';
      linear_attn::LinearAttnInputs in{q, k, v, fixed ? log_decay : Tensor(), Tensor()};
      const linear_attn::LinearAttnOptions opts{.decay = fixed ? linear_attn::Decay::fixed : linear_attn::Decay::none};
      const double fwd = median_ms([&] { linear_attn::linear_attn_forward(in, opts); }, r, warm);
      reset_peak_memory(gpu);
      const size_t base = memory_stats(gpu).current_bytes;
      const double fb = median_ms(
          [&] {
            linear_attn::linear_attn_forward(in, opts);
            linear_attn::linear_attn_backward(in, dout, Tensor(), opts);
          },
          r, warm);
      report("lctx", what, T, fwd, fb, (memory_stats(gpu).peak_bytes - base) / 1048576.0);
    }
    if (T < 1048576) {
      attn::FlashOptions fo;
      fo.mask = attn::Mask::causal;
      const double fwd = median_ms([&] { attn::flash_forward(q, k, v, fo); }, r, warm);
      const double fb = median_ms(
          [&] {
            auto out = attn::flash_forward(q, k, v, fo);
            attn::flash_backward(q, k, v, out.o, out.lse, dout, fo);
          },
          r, warm);
      report("lctx", "softmax", T, fwd, fb, 0);
    }
  }
  return 0;
}
