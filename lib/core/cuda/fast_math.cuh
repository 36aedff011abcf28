// Kernel math in the log2 domain: exp on the SFU (ex2) with the constants that convert natural
// logs to log2 and back (softmax-style kernels fold log2e into their scale: one FMA, then
// ex2). Namespace lctx like the rest of core/cuda/; included only from .cu files.
#pragma once

namespace lctx {

// 2^x on the SFU (ex2.approx.ftz; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}  // namespace lctx
