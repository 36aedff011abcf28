// N consecutive elements loaded and stored as one vector access (16 bytes for bf16 with N = 8):
// the elementwise and row kernels' memory path. The caller guarantees the alignment (pointer
// and offset multiples of N elements); N = 1 is the scalar fallback. Namespace lctx like the
// rest of core/cuda/; included only from .cu files.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "core/cuda_types.cuh"
#include "core/tensor.h"

namespace lctx {

template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <class T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}
template <class T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

// The same, converted to and from fp32.
template <int N, class T>
__device__ __forceinline__ void load_f32(const T* p, float (&f)[N]) {
  const Pack<T, N> pk = load_pack<T, N>(p);
#pragma unroll
  for (int j = 0; j < N; ++j) f[j] = to_f32(pk.v[j]);
}
template <int N, class T>
__device__ __forceinline__ void store_f32(T* p, const float (&f)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int j = 0; j < N; ++j) pk.v[j] = from_f32<T>(f[j]);
  store_pack<T, N>(p, pk);
}

// Host side: whether rows of `cols` elements of these tensors (of T) can be accessed in packs
// of N: the row length a multiple of N and every defined tensor's address aligned to a pack.
template <class T, int N>
bool packs_fit(int64_t cols, std::initializer_list<const Tensor*> ts) {
  if (cols % N != 0) return false;
  for (const Tensor* t : ts)
    if (t->defined() && reinterpret_cast<uintptr_t>(t->raw()) % (N * sizeof(T)) != 0) return false;
  return true;
}

}  // namespace lctx
