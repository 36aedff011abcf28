// Memory for tensors. CUDA memory comes from a caching allocator (freed blocks are kept in
// size-bucketed free lists and reused, so a training step does no cudaMalloc after the first);
// CPU memory is 64-byte aligned. Both count current and peak bytes handed out, which the
// benchmarks print to show O(S) memory. A freed CUDA block may be handed out again at once:
// callers that free a buffer still in use on another stream must synchronize first.
// LCTX_POISON_ALLOC=1 fills every block handed out with 0xFF bytes (NaN in every float type,
// -1 in the integer ones), as PyTorch's fill_uninitialized_memory does: code that reads memory
// it never wrote then gives NaN on the CPU as it might on a GPU that reuses a block.
#pragma once
#include <cstddef>

#include "core/device.h"

namespace lctx {

struct MemoryStats {
  size_t current_bytes = 0;   // bytes held by live tensors
  size_t peak_bytes = 0;      // max of current_bytes since the last reset
  size_t reserved_bytes = 0;  // bytes obtained from the system (CUDA: includes the cache)
};

void* allocate(size_t bytes, Device device);
void deallocate(void* ptr, Device device);

// Stream-ordered CUDA scratch (cudaMallocFromPoolAsync from a per-device pool that keeps its
// memory): usable by work queued on `s` after the call, returned to the pool once the work
// queued on `s` before deallocate_async is done, with no host synchronization (kernels on
// overlapping streams, as in ring attention, never see it reused early). Counted in
// memory_stats like every other block.
void* allocate_async(size_t bytes, Device device, Stream s);
void deallocate_async(void* ptr, Device device, Stream s);

// The LCTX_POISON_ALLOC switch (above) from code, for blocks handed out after the call.
void set_poison_alloc(bool on);
bool poison_alloc();

MemoryStats memory_stats(Device device);
void reset_peak_memory(Device device);
// Returns cached (unused) CUDA blocks to the driver.
void empty_cache(Device device);

}  // namespace lctx
