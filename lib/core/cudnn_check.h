// LCTX_CUDNN_CHECK: turns a failed cuDNN call into an lctx::Error naming the call, file:line,
// rank, cuDNN's status and its last error message. Only included by code compiled with
// LCTX_HAVE_CUDA.
#pragma once
#ifdef LCTX_HAVE_CUDA
#include <cudnn.h>

#include <string>

#include "core/error.h"

namespace lctx::detail {
inline std::string cudnn_message(cudnnStatus_t st) {
  char last[1024] = {};
  cudnnGetLastErrorString(last, sizeof(last));
  std::string msg = cudnnGetErrorString(st);
  if (last[0]) msg += std::string(" (") + last + ")";
  return msg;
}
}  // namespace lctx::detail

#define LCTX_CUDNN_CHECK(expr)                                                                 \
  do {                                                                                         \
    cudnnStatus_t lctx_st_ = (expr);                                                           \
    if (lctx_st_ != CUDNN_STATUS_SUCCESS)                                                      \
      LCTX_FAIL("cuDNN error in ", #expr, ": ", ::lctx::detail::cudnn_message(lctx_st_));      \
  } while (0)
#endif
