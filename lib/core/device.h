// Where a tensor lives (CPU or a CUDA device) and the stream work on it is queued to.
// Stream wraps cudaStream_t as an opaque handle so CPU-only code needs no CUDA headers;
// a default Stream{} is the CUDA legacy default stream, and is ignored on the CPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lctx {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

struct Stream {
  void* handle = nullptr;  // cudaStream_t
};

// True when lctx was built with CUDA (LCTX_CUDA) and at least one GPU is usable.
bool cuda_available();
// Number of usable GPUs (0 when built without CUDA or no driver/device).
int cuda_device_count();
// Blocks the host until all work queued on `s` has finished (no-op on CPU builds).
void synchronize(Stream s = {});
// Memory a program can hope to use on `device`: for the CPU the memory available now
// (/proc/meminfo MemAvailable, capped by the cgroup limit), for a GPU its total memory.
// 0 when unknown.
size_t device_memory_bytes(Device device);

}  // namespace lctx
