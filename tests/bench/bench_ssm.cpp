// lctx::ssm on the GPU (issue 18): the Mamba-1 selective scan, B=1, d_inner 4096, d_state 16,
// G=1, bf16 I/O with z, D, dt_bias and softplus, over T = 8k .. max_T: forward and
// forward+backward ms and the bandwidth achieved on the bytes the kernels must move (forward:
// x, dt, z, B, C read and y written; backward: x, dt, z, B, C, dy read and dx, d_dt, dz, dB, dC
// written), against a device-to-device copy measured here (the practical ceiling: bytes read +
// written per second). Then Mamba-2 SSD (lib/ssm/ssd.h, on linear_attn) at mamba_ssm's
// benchmark shape: nheads 32, headdim 64, d_state 128, one group; "ssd: no CUDA kernel" when the
// CUDA path throws. Then whole Mamba, Mamba-2 and softmax layers as lctx-train builds them
// (issue 18's "a whole Mamba layer's tokens/s next to a softmax layer"). Prints "scan ..." /
// "ssd ..." / "layer ..." / "copy ..." lines; run_bench_ssm.sh puts the PyTorch figures
// (bench_ssm_torch.py) beside them.
// Usage: bench_ssm [reps=20] [max_T=1048576] [parts=all|scan|ssd|layer]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench_mixer.h"
#include "bench_timing.h"
#include "core/cuda_check.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "ssm/selective_scan.h"
#include "ssm/ssd.h"

using namespace lctx;
using bench::median_ms;
using bench::random_cuda;

namespace {

Tensor uniform(const Shape& s, uint64_t seed, double lo, double hi) {
  Tensor t = Tensor::empty(s, DType::f32, Device::cuda());
  rng_uniform(t, seed, 0, lo, hi);
  return t;
}

// GB/s (read + written) of a 4 GiB device-to-device copy.
double copy_gbs(int reps) {
  const int64_t n = int64_t(1) << 31;  // bf16 elements
  Tensor a = Tensor::zeros({n}, DType::bf16, Device::cuda()), b = Tensor::empty({n}, DType::bf16, Device::cuda());
  const double ms = median_ms([&] { b.copy_from(a); }, reps, 3);
  return 2.0 * n * 2 / ms / 1e6;
}

// The selective scan at T tokens: "scan lctx T=.. fwd .. ms fwdbwd .. ms fwd_GBs .. fb_GBs .." .
void bench_scan(int64_t T, int reps, double copy) {
  const int64_t D = 4096, N = 16, G = 1;
  ssm::ScanInputs in;
  in.x = random_cuda({1, T, D}, DType::bf16, 1);
  in.dt = random_cuda({1, T, D}, DType::bf16, 2, -4.0, 0.5);
  in.z = random_cuda({1, T, D}, DType::bf16, 3);
  in.B = random_cuda({1, T, G, N}, DType::bf16, 4);
  in.C = random_cuda({1, T, G, N}, DType::bf16, 5);
  in.A = uniform({D, N}, 6, -16.0, -1.0);
  in.D = Tensor::full({D}, 1.0, DType::f32, Device::cuda());
  in.dt_bias = uniform({D}, 7, -1.0, 1.0);
  const Tensor dy = random_cuda({1, T, D}, DType::bf16, 8);
  const ssm::ScanOptions opts{};
  const double fwd = median_ms([&] { ssm::selective_scan_forward(in, opts); }, reps, 3);
  const double fb = median_ms(
      [&] {
        const auto out = ssm::selective_scan_forward(in, opts);
        ssm::selective_scan_backward(in, dy, out.final_state, opts);
      },
      reps, 3);
  const double tok = 2.0 * T * D, bc = 2.0 * T * G * N;  // bytes of one [1, T, D] / [1, T, G, N] tensor
  const double fwd_bytes = 4 * tok + 2 * bc, bwd_bytes = 7 * tok + 4 * bc;
  const double fwd_gbs = fwd_bytes / fwd / 1e6, fb_gbs = (fwd_bytes + bwd_bytes) / fb / 1e6;
  std::printf("scan lctx T=%ld fwd %.3f ms fwdbwd %.3f ms fwd_GBs %.0f fb_GBs %.0f fwd_pct %.1f fb_pct %.1f\n",
              static_cast<long>(T), fwd, fb, fwd_gbs, fb_gbs, 100 * fwd_gbs / copy, 100 * fb_gbs / copy);
  std::fflush(stdout);
}

// ---- Mamba-2 SSD against mamba_ssm's mamba_chunk_scan_combined (bench_ssm_torch.py) ----
// nheads 32, headdim 64, d_state 128, one group, bf16, dt softplus with bias, D: the shape of
// the figures. lctx's SSD runs on linear_attn's chunked kernel (its own chunk length).
void bench_ssd(int64_t T, int reps) {
  const int64_t H = 32, P = 64, N = 128, G = 1;
  ssm::SsdInputs in;
  in.x = random_cuda({1, T, H, P}, DType::bf16, 11);
  in.dt = random_cuda({1, T, H}, DType::bf16, 12, -4.0, 0.5);
  in.A = uniform({H}, 13, -16.0, -1.0);
  in.B = random_cuda({1, T, G, N}, DType::bf16, 14, 0.0, 0.1);
  in.C = random_cuda({1, T, G, N}, DType::bf16, 15, 0.0, 0.1);
  in.D = Tensor::full({H}, 1.0, DType::f32, Device::cuda());
  in.dt_bias = uniform({H}, 16, -1.0, 1.0);
  const Tensor dy = random_cuda({1, T, H, P}, DType::bf16, 17);
  const ssm::SsdOptions opts{};
  try {
    ssm::ssd_forward(in, opts);
  } catch (const std::exception& e) {
    std::printf("ssd: no CUDA kernel (%s)\n", e.what());
    return;
  }
  const double fwd = median_ms([&] { ssm::ssd_forward(in, opts); }, reps, 3);
  const double fb = median_ms(
      [&] {
        const auto out = ssm::ssd_forward(in, opts);
        ssm::ssd_backward(in, dy, out.final_state, opts);
      },
      reps, 3);
  std::printf("ssd lctx T=%ld fwd %.3f ms fwdbwd %.3f ms tokens_per_s_fb %.2fM\n", static_cast<long>(T), fwd, fb,
              T / fb / 1e3);
  std::fflush(stdout);
}

// A whole layer, as lctx-train builds it, at model dim 2048 (bench_mixer.h): `mamba` (expand 2:
// d_inner 4096, d_state 16, the scan's shape above), `mamba2` (its defaults: heads of 64,
// d_state 128) and `softmax` (16 heads of 128, causal flash): "layer lctx <kind> T=.. fwd ..".
void bench_layers(int64_t T, int reps) {
  for (const char* kind : {"mamba", "mamba2", "softmax"}) {
    try {
      const bench::MixerTimes t = bench::time_mixer(
          {std::string("model.mixers=") + kind, "model.dim=2048", "model.n_heads=16", "model.n_kv_heads=16",
           "model.head_dim=128"},
          T, reps);
      std::printf("layer lctx %s T=%ld fwd %.3f ms fwdbwd %.3f ms tokens_per_s_fb %.2fM\n", kind, static_cast<long>(T),
                  t.fwd_ms, t.fb_ms, T / t.fb_ms / 1e3);
    } catch (const Error& e) {
      std::printf("layer lctx %s T=%ld failed: %s\n", kind, static_cast<long>(T), e.what());
    }
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (!cuda_available()) {
    std::printf("bench_ssm: no CUDA GPU\n");
    return 0;
  }
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  const int64_t max_t = argc > 2 ? std::atoll(argv[2]) : int64_t(1) << 20;
  const std::string parts = argc > 3 ? argv[3] : "all";
  if (parts != "all" && parts != "scan" && parts != "ssd" && parts != "layer") {
    std::fprintf(stderr, "bench_ssm: parts is '%s', expected all, scan, ssd or layer\n", parts.c_str());
    return 2;
  }
  const auto want = [&](const char* part) { return parts == "all" || parts == part; };
  cudaDeviceProp prop{};
  LCTX_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s\n", prop.name);
  if (want("scan")) {
    const double copy = copy_gbs(reps);
    std::printf("copy lctx %.0f GB/s\n", copy);
    for (int64_t T : {int64_t(8192), int64_t(32768), int64_t(131072), int64_t(1) << 20})
      if (T <= max_t) bench_scan(T, T >= (int64_t(1) << 20) ? std::max(reps / 4, 3) : reps, copy);
  }
  for (int64_t T : {int64_t(8192), int64_t(32768), int64_t(131072)}) {
    if (T > max_t) break;
    if (want("ssd")) bench_ssd(T, reps);
    if (want("layer")) bench_layers(T, reps);
  }
  return 0;
}
