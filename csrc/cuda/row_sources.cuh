// Row sources of the CUDA verification kernels (the device counterpart of csrc/cpu/verify_walk.h's TensorRows /
// LogitsRows), torch-free. The chain, tree, GSD and Jacobi kernels are written once over a source S of a [B, S, V]
// family of distributions and never see where a row comes from:
//   bool S::present()            the source has rows (a draft source without rows means one-hot drafts)
//   bool S::usable(b, i)         row (b, i) can be a distribution; false is reported as row code 6 where the kernel
//                                reads the row (logits: NaN / +inf processed logits, or every logit -inf)
//   S::kComputed                 entries are computed, not loaded: a kernel reading a row many times stages it
//   S::Row S::row(b, i)          the row, whose entries are computed where they are read:
//     float Row::operator()(j)              entry j as float32
//     Pack<Row::Stored, N> Row::pack(j0)    N consecutive entries (0 past V) in their stored type, read with one
//                                           vector load where the address allows (to_float converts them)
// TensorRows reads a probability tensor (entries are checked where read, code 6). LogitsRows reads raw logits
// (CFG, temperature, top-k, top-p, softmax): RowStatsKernel makes one whole-row pass per logits row for the row's
// statistics (max, top-k threshold, normalisers, top-p cut: csrc/verify_logits_math.h RowStatistics), after which
// any entry is one processed_logit + processed_probability of the raw logits, computed by the kernel that reads it;
// no processed [B, S, V] tensor exists. Semantics: specdec_kernels/reference/verify_logits.py process_logits.
#pragma once

#include <cub/block/block_reduce.cuh>

#include "../verify_logits_math.h"
#include "verify_common.cuh"

namespace specdec::gpu {

// ------------------------------------------------------------------------------------------ probability tensors

template <class T>
struct TensorRow {
  using Stored = T;
  const T* data = nullptr;
  int vocab = 0;
  __device__ float operator()(int64_t j) const { return to_float(data[j]); }
  template <int ITEMS>
  __device__ Pack<T, ITEMS> pack(int j0) const {
    return load_pack<T, ITEMS>(data, j0, vocab);
  }
};

template <class T>
struct TensorRows {
  using Row = TensorRow<T>;
  static constexpr bool kComputed = false;  // entries are loads
  const T* base;  // [B, slots, V], or nullptr: no rows (one-hot drafts)
  int slots;
  int vocab;
  __device__ bool present() const { return base != nullptr; }
  __device__ bool usable(int64_t, int) const { return true; }  // entries are checked where they are read
  __device__ Row row(int64_t b, int i) const {
    return Row{base + (b * slots + i) * static_cast<int64_t>(vocab), vocab};
  }
};

// ------------------------------------------------------------------------------------------ raw logits

struct LogitsProcessing {
  bool cfg;            // the tensor holds a doubled batch, cond rows first
  double scale;        // CFG scale
  double temperature;  // already clamped to >= kMinTemperature
  int top_k;           // 0 or >= V: off
  double top_p;        // >= 1: off
};

// One logits row, processed entry by entry where it is read.
template <class T>
struct LogitsRow {
  using Stored = float;
  const T* cond = nullptr;
  const T* uncond = nullptr;  // the uncond row of a doubled batch, or nullptr (no CFG)
  double scale = 0.0;
  double temperature = 1.0;
  logits::RowStatistics stats{};
  int vocab = 0;

  __device__ float value(T c, T u) const {
    const bool cfg = uncond != nullptr;
    const float z = logits::processed_logit(static_cast<double>(to_float(c)), cfg ? static_cast<double>(to_float(u))
                                                                                     : 0.0,
                                            cfg, scale, temperature);
    return logits::processed_probability(z, stats);
  }
  __device__ float operator()(int64_t j) const { return value(cond[j], uncond != nullptr ? uncond[j] : cond[j]); }
  template <int ITEMS>
  __device__ Pack<float, ITEMS> pack(int j0) const {
    const Pack<T, ITEMS> c = load_pack<T, ITEMS>(cond, j0, vocab);
    const Pack<T, ITEMS> u = uncond != nullptr ? load_pack<T, ITEMS>(uncond, j0, vocab) : c;
    Pack<float, ITEMS> out;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) out.v[i] = j0 + i < vocab ? value(c.v[i], u.v[i]) : 0.0f;
    return out;
  }
};

template <class T>
struct LogitsRows {
  using Row = LogitsRow<T>;
  static constexpr bool kComputed = true;  // entries are float64 math on the raw logits
  const T* cond;    // [B, slots, V] raw logits, or nullptr: no rows
  const T* uncond;  // [B, slots, V] the uncond half of a doubled batch, or nullptr (no CFG)
  int slots;
  int vocab;
  double scale;
  double temperature;
  const logits::RowStatistics* stats;  // [B, slots] from RowStatsKernel
  __device__ bool present() const { return cond != nullptr; }
  __device__ bool usable(int64_t b, int i) const { return stats[b * slots + i].usable; }
  __device__ Row row(int64_t b, int i) const {
    const int64_t offset = (b * slots + i) * static_cast<int64_t>(vocab);
    return Row{cond + offset, uncond != nullptr ? uncond + offset : nullptr, scale, temperature,
               stats[b * slots + i], vocab};
  }
};

__device__ __forceinline__ int32_t order_key(float z) {
  const int32_t bits = __float_as_int(z);
  return bits >= 0 ? bits : bits ^ 0x7FFFFFFF;
}
// order_key is an involution on the bits: the float whose order key is `key`.
__device__ __forceinline__ float float_of_order_key(int32_t key) {
  return __int_as_float(key >= 0 ? key : key ^ 0x7FFFFFFF);
}

constexpr int kRowStatsBlock = 512;

// Grid: one block per logits row r in [0, rows) (rows = B * S): cond row r, uncond row rows + r (CFG). Writes
// stats[r]. With CACHE_Z the processed logits are kept in dynamic shared memory (V floats), else recomputed from the
// raw logits in every pass. top-k is an exact bisection over order-preserving int32 keys of the processed logits (32
// block-wide counts; the threshold is the k-th largest z, compared as a float as the reference compares); top-p a
// bisection over the float32 probabilities' bits (32 block-wide float64 sums, whose order differs from the
// reference's sequential one only at float64 rounding level).
template <int BLOCK, class T, bool CACHE_Z>
__global__ void __launch_bounds__(BLOCK, 2)  // two blocks per SM: up to 64 registers (no spills)
    RowStatsKernel(const T* logits, int64_t rows, int vocab, LogitsProcessing proc, logits::RowStatistics* stats) {
  using ReduceF32 = cub::BlockReduce<float, BLOCK>;
  using ReduceF64 = cub::BlockReduce<double, BLOCK>;
  using ReduceInt = cub::BlockReduce<int, BLOCK>;
  __shared__ union {
    typename ReduceF32::TempStorage f32;
    typename ReduceF64::TempStorage f64;
    typename ReduceInt::TempStorage i32;
  } storage;
  __shared__ float s_max;
  __shared__ double s_f64;
  __shared__ int s_int;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = blockIdx.x;
  const T* cond = logits + row * vocab;
  const T* uncond = logits + (rows + row) * vocab;  // only read with CFG
  float* z_cache = CACHE_Z ? dynamic_smem<float>() : nullptr;
  auto z_of = [&](int j) {
    const double c = static_cast<double>(to_float(cond[j]));
    const double u = proc.cfg ? static_cast<double>(to_float(uncond[j])) : 0.0;
    return logits::processed_logit(c, u, proc.cfg, proc.scale, proc.temperature);
  };
  auto z_at = [&](int j) {
    if constexpr (CACHE_Z) {
      return z_cache[j];
    } else {
      return z_of(j);
    }
  };

  // Pass 1: processed logits, their max and finiteness.
  float local_max = -INFINITY;
  int nonfinite = 0;
  for (int j = tid; j < vocab; j += BLOCK) {
    const float z = z_of(j);
    if constexpr (CACHE_Z) z_cache[j] = z;
    nonfinite += !(z < INFINITY);
    local_max = z > local_max ? z : local_max;
  }
  const float row_max = ReduceF32(storage.f32).Reduce(local_max, [](float a, float b) { return a > b ? a : b; });
  if (tid == 0) s_max = row_max;
  __syncthreads();
  const int bad_count = ReduceInt(storage.i32).Sum(nonfinite);
  if (tid == 0) s_int = bad_count;
  __syncthreads();  // also publishes z_cache
  const float z_max = s_max;
  const bool usable = !(s_int > 0 || z_max == -INFINITY);
  __syncthreads();

  auto block_count = [&](int local) {
    const int total = ReduceInt(storage.i32).Sum(local);
    if (tid == 0) s_int = total;
    __syncthreads();
    const int value = s_int;
    __syncthreads();
    return value;
  };
  auto block_sum = [&](double local) {
    const double total = ReduceF64(storage.f64).Sum(local);
    if (tid == 0) s_f64 = total;
    __syncthreads();
    const double value = s_f64;
    __syncthreads();
    return value;
  };

  logits::RowStatistics s{};
  s.shift = static_cast<double>(z_max);
  s.k_threshold = -INFINITY;
  s.top_p = false;
  s.p_cut = 0.0f;
  s.usable = usable;
  // top-k: the largest key t with count(key(z) >= t) >= k, which is the key of the k-th largest z (uniform loop:
  // every thread holds lo and hi).
  if (proc.top_k > 0 && proc.top_k < vocab) {
    int64_t lo = INT32_MIN, hi = INT32_MAX;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      int local = 0;
      for (int j = tid; j < vocab; j += BLOCK) local += order_key(z_at(j)) >= mid;
      if (block_count(local) >= proc.top_k) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    s.k_threshold = float_of_order_key(static_cast<int32_t>(lo));
  }
  auto weight_of = [&](float z) {  // e = exp(z - max) over the top-k survivors
    return z >= s.k_threshold ? logits::exp_nonpositive(static_cast<double>(z) - s.shift) : 0.0;
  };
  double local_total = 0.0;
  for (int j = tid; j < vocab; j += BLOCK) local_total += weight_of(z_at(j));
  s.total = block_sum(local_total);
  s.kept_total = s.total;

  // top-p: the smallest cut t over p1 = float32(e / total) whose strictly-above mass is < top_p.
  if (proc.top_p < 1.0) {
    auto p1_of = [&](int j) { return static_cast<float>(weight_of(z_at(j)) / s.total); };
    if constexpr (CACHE_Z) {  // the bisection reads p1 32 times: keep it where z was (z is recomputed below)
      for (int j = tid; j < vocab; j += BLOCK) z_cache[j] = p1_of(j);  // each thread rewrites only its own entries
      __syncthreads();
    }
    auto p1_at = [&](int j) {
      if constexpr (CACHE_Z) {
        return z_cache[j];
      } else {
        return p1_of(j);
      }
    };
    int64_t lo = 0, hi = 0x7F800000;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      double local = 0.0;
      for (int j = tid; j < vocab; j += BLOCK) {
        const float p1 = p1_at(j);
        if (__float_as_int(p1) > mid) local += static_cast<double>(p1);
      }
      if (block_sum(local) < proc.top_p) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    s.top_p = true;
    s.p_cut = __int_as_float(static_cast<int32_t>(lo));
    double local = 0.0;
    for (int j = tid; j < vocab; j += BLOCK) {
      const double e = weight_of(z_of(j));
      if (!(static_cast<float>(e / s.total) < s.p_cut)) local += e;
    }
    s.kept_total = block_sum(local);
  }
  if (tid == 0) stats[row] = s;
}

// Row statistics of a (rows or 2 * rows, V) logits tensor (cfg: a doubled batch, cond rows first) into stats[rows].
template <class T>
cudaError_t RowStats(const T* logits, int64_t rows, int vocab, const LogitsProcessing& proc,
                     logits::RowStatistics* stats, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const size_t z_bytes = static_cast<size_t>(vocab) * sizeof(float);
  int device = 0, optin = 0;
  bool cache = cudaGetDevice(&device) == cudaSuccess &&
               cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
               z_bytes + 1024 <= static_cast<size_t>(optin);  // room for the kernel's static shared memory
  if (cache) {
    auto kernel = RowStatsKernel<kRowStatsBlock, T, true>;
    cache = ensure_dynamic_smem(kernel, z_bytes) == cudaSuccess;
    if (cache) {
      kernel<<<static_cast<unsigned>(rows), kRowStatsBlock, z_bytes, stream>>>(logits, rows, vocab, proc, stats);
      return cudaGetLastError();
    }
    (void)cudaGetLastError();  // clear the refused attribute; fall back to recomputing z
  }
  RowStatsKernel<kRowStatsBlock, T, false>
      <<<static_cast<unsigned>(rows), kRowStatsBlock, 0, stream>>>(logits, rows, vocab, proc, stats);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
