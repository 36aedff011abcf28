// lctx::ops on the GPU: bf16 GEMM 8192^3 (TFLOP/s), as torch.matmul (NN) and as a linear layer
// x W^T (NT), and RMSNorm forward on [16384, 8192] bf16 (GB/s: x read + out written).
// Random normal inputs, 10 warm-up runs, then the median of 50 runs timed with CUDA events.
// Prints "RESULT <name> <value> <unit>"; tests/bench/run_bench_ops.sh adds the PyTorch figures.
// Usage: bench_ops [gemm_size=8192] [norm_rows=16384] [norm_cols=8192]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "bench_timing.h"
#include "core/cuda_check.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"

using namespace lctx;
using bench::median_ms;
using bench::random_cuda;

namespace {

}  // namespace

int main(int argc, char** argv) {
  if (!cuda_available()) {
    std::printf("bench_ops: no CUDA GPU\n");
    return 0;
  }
  const int64_t g = argc > 1 ? std::atoll(argv[1]) : 8192;
  const int64_t rows = argc > 2 ? std::atoll(argv[2]) : 16384, cols = argc > 3 ? std::atoll(argv[3]) : 8192;
  cudaDeviceProp prop{};
  LCTX_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s\n", prop.name);

  {
    Tensor a = random_cuda({g, g}, DType::bf16, 1), b = random_cuda({g, g}, DType::bf16, 2), c = Tensor::empty({g, g}, DType::bf16, Device::cuda());
    const double flops = 2.0 * g * g * g;
    const double nn = median_ms([&] { ops::matmul(c, a, b); }, 50, 10);
    std::printf("RESULT gemm_bf16_nn_%ld %.1f TFLOP/s (%.3f ms)\n", static_cast<long>(g), flops / nn / 1e9, nn);
    const double nt = median_ms([&] { ops::matmul(c, a, b, ops::Trans::none, ops::Trans::transpose); }, 50, 10);
    std::printf("RESULT gemm_bf16_nt_%ld %.1f TFLOP/s (%.3f ms)\n", static_cast<long>(g), flops / nt / 1e9, nt);
  }
  {
    Tensor x = random_cuda({rows, cols}, DType::bf16, 3), w = random_cuda({cols}, DType::bf16, 4, 1.0, 0.1);
    Tensor out = Tensor::empty({rows, cols}, DType::bf16, Device::cuda());
    Tensor rstd = Tensor::empty({rows}, DType::f32, Device::cuda());
    const double bytes = 2.0 * rows * cols * 2;  // read x, write out (w and rstd are negligible)
    const double ms = median_ms([&] { ops::rmsnorm_forward(out, rstd, x, w, 1e-6f); }, 50, 10);
    std::printf("RESULT rmsnorm_bf16_%ldx%ld %.1f GB/s (%.3f ms)\n", static_cast<long>(rows), static_cast<long>(cols),
                bytes / ms / 1e6, ms);
  }
  return 0;
}
