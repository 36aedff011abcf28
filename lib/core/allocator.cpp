#include "core/allocator.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"

namespace lctx {

namespace {

// Whether blocks are filled with 0xFF as they are handed out: LCTX_POISON_ALLOC, or
// set_poison_alloc.
std::atomic<bool>& poison_flag() {
  static std::atomic<bool> on = [] {
    const char* v = std::getenv("LCTX_POISON_ALLOC");
    return v && std::atoi(v) > 0;
  }();
  return on;
}
bool poison() { return poison_flag().load(std::memory_order_relaxed); }
constexpr int kPoisonByte = 0xFF;

struct Counter {
  size_t current = 0, peak = 0, reserved = 0;
  void add(size_t n) {
    current += n;
    peak = std::max(peak, current);
  }
};

struct CpuPool {
  std::mutex mu;
  Counter count;
  std::unordered_map<void*, size_t> sizes;
};

// The pools are never destroyed: tensors in static storage (a test's parameters, a user's
// cache) may free their memory at exit after function-local statics would be gone.
CpuPool& cpu_pool() {
  static auto* p = new CpuPool;
  return *p;
}

// Rounds small blocks to 512 B and large ones to 2 MiB so that blocks of a recurring shape
// hit the cache exactly; a cached block is reused for requests up to 2x smaller.
size_t round_cuda_size(size_t n) {
  constexpr size_t kSmall = 512, kLarge = size_t(2) << 20;
  if (n < kLarge) return std::max(kSmall, (n + kSmall - 1) / kSmall * kSmall);
  return (n + kLarge - 1) / kLarge * kLarge;
}

#ifdef LCTX_HAVE_CUDA
struct CudaPool {
  std::mutex mu;
  Counter count;
  std::multimap<size_t, void*> free_blocks;  // size -> ptr
  std::unordered_map<void*, size_t> live;    // ptr -> rounded size
  cudaMemPool_t ordered = nullptr;            // stream-ordered scratch (allocate_async)
  std::unordered_map<void*, size_t> ordered_live;

  void release_cache(int device) {
    LCTX_CUDA_CHECK(cudaSetDevice(device));
    for (auto& [size, ptr] : free_blocks) {
      LCTX_CUDA_CHECK(cudaFree(ptr));
      count.reserved -= size;
    }
    free_blocks.clear();
  }
};

// Poisons a block before its caller can queue work on it: the memset runs on the default
// stream, which non-blocking streams do not wait for, so the device is synchronized after it.
void poison_cuda(void* ptr, size_t size, int device) {
  int prev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&prev));
  LCTX_CUDA_CHECK(cudaSetDevice(device));
  LCTX_CUDA_CHECK(cudaMemset(ptr, kPoisonByte, size));
  LCTX_CUDA_CHECK(cudaDeviceSynchronize());
  LCTX_CUDA_CHECK(cudaSetDevice(prev));
}

CudaPool& cuda_pool(int device) {
  static auto* mu = new std::mutex;  // never destroyed, as cpu_pool's
  static auto* pools = new std::map<int, CudaPool>;
  std::lock_guard lock(*mu);
  return (*pools)[device];
}

void* cuda_allocate(size_t bytes, int device) {
  CudaPool& pool = cuda_pool(device);
  const size_t size = round_cuda_size(bytes);
  std::lock_guard lock(pool.mu);
  void* ptr = nullptr;
  auto it = pool.free_blocks.lower_bound(size);
  if (it != pool.free_blocks.end() && it->first <= 2 * size) {
    ptr = it->second;
    const size_t got = it->first;
    pool.free_blocks.erase(it);
    pool.live[ptr] = got;
    pool.count.add(got);
    if (poison()) poison_cuda(ptr, got, device);
    return ptr;
  }
  int prev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&prev));
  LCTX_CUDA_CHECK(cudaSetDevice(device));
  cudaError_t err = cudaMalloc(&ptr, size);
  if (err == cudaErrorMemoryAllocation) {  // drop the cache and try once more
    (void)cudaGetLastError();
    pool.release_cache(device);
    err = cudaMalloc(&ptr, size);
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    cudaSetDevice(prev);
    LCTX_FAIL("CUDA allocation of ", bytes, " bytes on cuda:", device, " failed (",
              cudaGetErrorString(err), "); in use ", pool.count.current, " bytes, reserved ",
              pool.count.reserved, " bytes");
  }
  LCTX_CUDA_CHECK(cudaSetDevice(prev));
  pool.count.reserved += size;
  pool.live[ptr] = size;
  pool.count.add(size);
  if (poison()) poison_cuda(ptr, size, device);
  return ptr;
}

cudaMemPool_t ordered_pool(CudaPool& pool, int device) {
  if (!pool.ordered) {
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    LCTX_CUDA_CHECK(cudaMemPoolCreate(&pool.ordered, &props));
    uint64_t keep = UINT64_MAX;  // keep freed memory: steady-state steps do no cudaMalloc
    LCTX_CUDA_CHECK(cudaMemPoolSetAttribute(pool.ordered, cudaMemPoolAttrReleaseThreshold, &keep));
  }
  return pool.ordered;
}

void cuda_deallocate(void* ptr, int device) {
  CudaPool& pool = cuda_pool(device);
  std::lock_guard lock(pool.mu);
  auto it = pool.live.find(ptr);
  LCTX_CHECK(it != pool.live.end(), "deallocate: pointer ", ptr, " was not allocated on cuda:", device);
  pool.count.current -= it->second;
  pool.free_blocks.emplace(it->second, ptr);
  pool.live.erase(it);
}
#endif

}  // namespace

void* allocate(size_t bytes, Device device) {
  if (bytes == 0) bytes = 1;
  if (device.is_cpu()) {
    const size_t size = (bytes + 63) / 64 * 64;
    void* ptr = std::aligned_alloc(64, size);
    LCTX_CHECK(ptr != nullptr, "CPU allocation of ", bytes, " bytes failed");
    CpuPool& pool = cpu_pool();
    std::lock_guard lock(pool.mu);
    pool.sizes[ptr] = size;
    pool.count.add(size);
    pool.count.reserved = pool.count.current;
    if (poison()) std::memset(ptr, kPoisonByte, size);
    return ptr;
  }
#ifdef LCTX_HAVE_CUDA
  return cuda_allocate(bytes, device.index);
#else
  LCTX_FAIL("allocate on ", device.str(), ": lctx was built without CUDA (LCTX_CUDA=OFF)");
#endif
}

void deallocate(void* ptr, Device device) {
  if (ptr == nullptr) return;
  if (device.is_cpu()) {
    CpuPool& pool = cpu_pool();
    {
      std::lock_guard lock(pool.mu);
      auto it = pool.sizes.find(ptr);
      if (it != pool.sizes.end()) {
        pool.count.current -= it->second;
        pool.count.reserved = pool.count.current;
        pool.sizes.erase(it);
      }
    }
    std::free(ptr);
    return;
  }
#ifdef LCTX_HAVE_CUDA
  cuda_deallocate(ptr, device.index);
#endif
}

void* allocate_async(size_t bytes, Device device, Stream s) {
#ifdef LCTX_HAVE_CUDA
  LCTX_CHECK(device.is_cuda(), "allocate_async: ", device.str(), " is not a GPU");
  CudaPool& pool = cuda_pool(device.index);
  std::lock_guard lock(pool.mu);
  void* ptr = nullptr;
  const size_t size = round_cuda_size(std::max<size_t>(bytes, 1));
  const cudaError_t err =
      cudaMallocFromPoolAsync(&ptr, size, ordered_pool(pool, device.index), static_cast<cudaStream_t>(s.handle));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    LCTX_FAIL("stream-ordered CUDA allocation of ", bytes, " bytes on ", device.str(), " failed (",
              cudaGetErrorString(err), "); in use ", pool.count.current, " bytes");
  }
  pool.ordered_live[ptr] = size;
  pool.count.add(size);
  if (poison()) LCTX_CUDA_CHECK(cudaMemsetAsync(ptr, kPoisonByte, size, static_cast<cudaStream_t>(s.handle)));
  return ptr;
#else
  (void)bytes, (void)s;
  LCTX_FAIL("allocate_async on ", device.str(), ": lctx was built without CUDA (LCTX_CUDA=OFF)");
#endif
}

void deallocate_async(void* ptr, Device device, Stream s) {
#ifdef LCTX_HAVE_CUDA
  if (ptr == nullptr) return;
  CudaPool& pool = cuda_pool(device.index);
  std::lock_guard lock(pool.mu);
  auto it = pool.ordered_live.find(ptr);
  LCTX_CHECK(it != pool.ordered_live.end(), "deallocate_async: pointer ", ptr, " was not allocated on ", device.str());
  pool.count.current -= it->second;
  pool.ordered_live.erase(it);
  LCTX_CUDA_CHECK(cudaFreeAsync(ptr, static_cast<cudaStream_t>(s.handle)));
#else
  (void)ptr, (void)device, (void)s;
#endif
}

void set_poison_alloc(bool on) { poison_flag() = on; }
bool poison_alloc() { return poison(); }

MemoryStats memory_stats(Device device) {
  if (device.is_cpu()) {
    CpuPool& pool = cpu_pool();
    std::lock_guard lock(pool.mu);
    return {pool.count.current, pool.count.peak, pool.count.reserved};
  }
#ifdef LCTX_HAVE_CUDA
  CudaPool& pool = cuda_pool(device.index);
  std::lock_guard lock(pool.mu);
  uint64_t ordered_reserved = 0;
  if (pool.ordered)
    LCTX_CUDA_CHECK(cudaMemPoolGetAttribute(pool.ordered, cudaMemPoolAttrReservedMemCurrent, &ordered_reserved));
  return {pool.count.current, pool.count.peak, pool.count.reserved + static_cast<size_t>(ordered_reserved)};
#else
  return {};
#endif
}

void reset_peak_memory(Device device) {
  if (device.is_cpu()) {
    CpuPool& pool = cpu_pool();
    std::lock_guard lock(pool.mu);
    pool.count.peak = pool.count.current;
    return;
  }
#ifdef LCTX_HAVE_CUDA
  CudaPool& pool = cuda_pool(device.index);
  std::lock_guard lock(pool.mu);
  pool.count.peak = pool.count.current;
#endif
}

void empty_cache(Device device) {
#ifdef LCTX_HAVE_CUDA
  if (device.is_cuda()) {
    CudaPool& pool = cuda_pool(device.index);
    std::lock_guard lock(pool.mu);
    pool.release_cache(device.index);
  }
#else
  (void)device;
#endif
}

}  // namespace lctx
