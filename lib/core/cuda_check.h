// LCTX_CUDA_CHECK / LCTX_CUBLAS_CHECK: turn a failed CUDA runtime or cuBLAS call into an
// lctx::Error naming the call, file:line, rank and the library's own error string.
// Only included by code compiled with LCTX_HAVE_CUDA.
#pragma once
#ifdef LCTX_HAVE_CUDA
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/device.h"
#include "core/error.h"

#define LCTX_CUDA_CHECK(expr)                                                             \
  do {                                                                                    \
    cudaError_t lctx_err_ = (expr);                                                       \
    if (lctx_err_ != cudaSuccess)                                                         \
      LCTX_FAIL("CUDA error in ", #expr, ": ", cudaGetErrorName(lctx_err_), " (",         \
                cudaGetErrorString(lctx_err_), ")");                                      \
  } while (0)

// Checks the launch that just happened (bad configuration, missing kernel image).
#define LCTX_CUDA_CHECK_LAUNCH(name)                                                      \
  do {                                                                                    \
    cudaError_t lctx_err_ = cudaGetLastError();                                           \
    if (lctx_err_ != cudaSuccess)                                                         \
      LCTX_FAIL("CUDA kernel launch ", name, " failed: ", cudaGetErrorString(lctx_err_)); \
  } while (0)

#define LCTX_CUBLAS_CHECK(expr)                                                               \
  do {                                                                                        \
    cublasStatus_t lctx_st_ = (expr);                                                         \
    if (lctx_st_ != CUBLAS_STATUS_SUCCESS)                                                    \
      LCTX_FAIL("cuBLAS error in ", #expr, ": ", cublasGetStatusString(lctx_st_));            \
  } while (0)

namespace lctx {
inline cudaStream_t cuda_stream(Stream s) { return static_cast<cudaStream_t>(s.handle); }
}  // namespace lctx
#endif
