#include "core/device.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

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

size_t device_memory_bytes(Device device) {
  if (device.is_cuda()) {
#ifdef LCTX_HAVE_CUDA
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device.index) == cudaSuccess) return prop.totalGlobalMem;
    (void)cudaGetLastError();
#endif
    return 0;
  }
  size_t available = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);)
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream(line.substr(13)) >> available;
      available *= 1024;  // kB
    }
  for (const char* limit_file : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream f(limit_file);
    size_t limit = 0;
    if (f >> limit && limit > 0) available = available ? std::min(available, limit) : limit;
  }
  return available;
}

}  // namespace lctx
