#include "core/device.h"

#include "core/cuda_check.h"

namespace lctx {

int cuda_device_count() {
#ifdef LCTX_HAVE_CUDA
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
#else
  return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

void synchronize(Stream s) {
#ifdef LCTX_HAVE_CUDA
  if (cuda_available()) LCTX_CUDA_CHECK(cudaStreamSynchronize(cuda_stream(s)));
#else
  (void)s;
#endif
}

}  // namespace lctx
