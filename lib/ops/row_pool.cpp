#include "ops/row_pool.h"

#include <vector>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
void cpu_forward(T* buckets, const T* rows, const int32_t* offsets, const int32_t* members, double scale, int64_t B,
                 int64_t L, int64_t N, int64_t R) {
  const auto f = static_cast<T>(scale);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < N; ++c) {
      T* out = buckets + (b * N + c) * R;
      for (int32_t j = offsets[c]; j < offsets[c + 1]; ++j) {
        const T* in = rows + (b * L + members[j]) * R;
        for (int64_t e = 0; e < R; ++e) out[e] += f * in[e];
      }
    }
}

template <class T>
void cpu_backward(T* rows, const T* buckets, const int32_t* bucket, double scale, int64_t B, int64_t L, int64_t N,
                  int64_t R) {
  const auto f = static_cast<T>(scale);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) {
      if (bucket[l] < 0) continue;
      T* out = rows + (b * L + l) * R;
      const T* in = buckets + (b * N + bucket[l]) * R;
      for (int64_t e = 0; e < R; ++e) out[e] += f * in[e];
    }
}

// rows [B, L, R] and buckets [B, N, R] for an index of L rows and N buckets.
void check_pool(const char* op, const Tensor& rows, const Tensor& buckets, const RowBuckets& ix) {
  detail::check_float_input(op, "rows", rows);
  detail::check_float_input(op, "buckets", buckets);
  check_same_device(op, {&rows, &buckets, &ix.bucket, &ix.offsets});
  if (ix.members.numel() > 0) check_same_device(op, {&rows, &ix.members});  // empty: no device to match
  check_dtype(op, "buckets", buckets, rows.dtype());
  LCTX_CHECK(rows.device().is_cpu() || rows.dtype() == wide_dtype(rows.dtype()), op, ": rows ", rows.str(),
             " must be f32 or f64 (sums of rows)");
  const int64_t L = ix.bucket.numel(), N = ix.offsets.numel() - 1;
  LCTX_CHECK(rows.dim() == 3 && rows.size(1) == L, op, ": rows ", rows.str(), " must be [B, ", L,
             ", R] for an index of ", L, " rows");
  check_shape(op, "buckets", buckets, {rows.size(0), N, rows.size(2)});
}

}  // namespace

RowBuckets row_buckets(std::span<const int64_t> bucket_of_row, int64_t buckets, Device dev) {
  const int64_t L = static_cast<int64_t>(bucket_of_row.size());
  std::vector<double> count(static_cast<size_t>(buckets + 1), 0.0), bucket(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    const int64_t c = bucket_of_row[static_cast<size_t>(l)];
    LCTX_CHECK(c >= -1 && c < buckets, "row_buckets: row ", l, " is in bucket ", c, ", expected -1 or [0, ", buckets,
               ")");
    bucket[static_cast<size_t>(l)] = static_cast<double>(c);
    if (c >= 0) count[static_cast<size_t>(c + 1)] += 1;
  }
  for (int64_t c = 0; c < buckets; ++c) count[static_cast<size_t>(c + 1)] += count[static_cast<size_t>(c)];
  std::vector<double> members(static_cast<size_t>(count.back())), next(count.begin(), count.end() - 1);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t c = bucket_of_row[static_cast<size_t>(l)];
    if (c >= 0) members[static_cast<size_t>(next[static_cast<size_t>(c)]++)] = static_cast<double>(l);
  }
  auto ints = [&](const std::vector<double>& v) {
    return Tensor::from_vector({static_cast<int64_t>(v.size())}, v, DType::i32).to(dev);
  };
  return {ints(bucket), ints(count), ints(members)};
}

void row_pool_forward(Tensor& buckets, const Tensor& rows, const RowBuckets& ix, double scale, Stream s) {
  constexpr const char* op = "row_pool_forward";
  check_pool(op, rows, buckets, ix);
  if (rows.device().is_cuda()) return LCTX_OPS_CUDA(op, rows, cuda::row_pool_forward(buckets, rows, ix, scale, s));
  LCTX_DISPATCH_CPU_FLOAT(rows.dtype(), op, [&] {
    cpu_forward(buckets.data<scalar_t>(), rows.data<scalar_t>(), ix.offsets.data<int32_t>(),
                ix.members.data<int32_t>(), scale, rows.size(0), rows.size(1), buckets.size(1), rows.size(2));
  });
}

void row_pool_backward(Tensor& rows, const Tensor& buckets, const RowBuckets& ix, double scale, Stream s) {
  constexpr const char* op = "row_pool_backward";
  check_pool(op, rows, buckets, ix);
  if (rows.device().is_cuda()) return LCTX_OPS_CUDA(op, rows, cuda::row_pool_backward(rows, buckets, ix, scale, s));
  LCTX_DISPATCH_CPU_FLOAT(rows.dtype(), op, [&] {
    cpu_backward(rows.data<scalar_t>(), buckets.data<scalar_t>(), ix.bucket.data<int32_t>(), scale, rows.size(0),
                 rows.size(1), buckets.size(1), rows.size(2));
  });
}

}  // namespace lctx::ops
