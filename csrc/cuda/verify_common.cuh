// Torch-free block- and warp-level building blocks shared by the CUDA verification kernels (the
// device counterpart of csrc/cpu/verify_common.h): how the GPU schedules the per-element math of
// ../verify_math.h, which the CPU kernels share. Semantics: docs/ALGORITHMS.md §3 and
// specdec_kernels/reference. Every decision is taken in float64 the way the reference takes it;
// float32 work that must not be contracted into FMAs (distances) uses explicit _rn intrinsics.
//
// Conventions for every block-level function here: all threads of the block call it with the same
// (uniform) arguments, it may contain __syncthreads(), and it returns the same value in every thread.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "../methods.h"
#include "../verify_math.h"

namespace specdec::gpu {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void set_zero(float& v) { v = 0.0f; }
__device__ __forceinline__ void set_zero(__half& v) { v = __float2half(0.0f); }
__device__ __forceinline__ void set_zero(__nv_bfloat16& v) { v = __float2bfloat16(0.0f); }

// Probability as the reference sees it: the stored value converted to float32, then to float64.
template <class T>
__device__ __forceinline__ double prob64(const T* row, int64_t j) {
  return static_cast<double>(to_float(row[j]));
}

// Order-preserving bits of a non-negative float (+0 and -0 map to the same key: they compare equal).
__device__ __forceinline__ uint32_t nonneg_float_bits(float v) { return v == 0.0f ? 0u : __float_as_uint(v); }

// Bits needed to store any index in [0, n) (at least 1).
__host__ __device__ __forceinline__ int index_bits(int64_t n) {
  int bits = 1;
  while (bits < 62 && (int64_t{1} << bits) < n) ++bits;
  return bits;
}

// Host side: dynamic shared memory above the default 48 KB needs an explicit opt-in per kernel.
template <class Kernel>
cudaError_t ensure_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

// The kernel's dynamic shared memory, viewed as T (one extern declaration for every kernel).
template <class T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char specdec_dynamic_smem[];
  return reinterpret_cast<T*>(specdec_dynamic_smem);
}

__device__ __forceinline__ bool test_bit(const unsigned* bits, int j) { return (bits[j >> 5] >> (j & 31)) & 1u; }

// ---------------------------------------------------------------------------------------------
// A verification rule's decoded parameters as the kernels take them (built on the host from the one decoder,
// logits::decode_params, by the glue's rule_params): the method code, its tables and every rule's settings.

// GSD's settings (GsdConfig with the tables), as the group-mass routine reads them.
struct GsdParams {
  int h_lo;             // less-probable window members, clipped to [0, vocab - 1]
  int h_hi;             // more-probable window members, clipped to [0, vocab - 1]
  float p_thr;          // |p(j) - p(x)| < p_thr, compared in float32 as the reference does
  float d_thr;          // squared distance < d_thr (float32), only with an embedding table
  const float* emb;     // [vocab, emb_dim] float32 or nullptr (no distance filter)
  int emb_dim;
};

// The kernels' instantiation for a method code this build does not implement (method_traits(code).known is
// false): it reports every row as code 7 (methods.h kBadMethod) instead of guessing a rule.
constexpr int kUnknownMethod = -1;

struct RuleParams {
  int64_t method;            // methods.h code; the kernels branch on method_traits(method)
  const int32_t* neighbors;  // [V, k] int32 when the rule needs_neighbors, else nullptr
  int k;
  LanternConfig lantern;
  GsdParams gsd;
  TypicalConfig typical;
};

// ---------------------------------------------------------------------------------------------
// Block-wide float64 / int sums, broadcast to every thread. The trailing barrier makes back-to-back
// calls on the same storage safe (nobody starts the next reduction before all have read the result).
template <int BLOCK>
struct BlockSum {
  using ReduceF64 = cub::BlockReduce<double, BLOCK>;
  using ReduceInt = cub::BlockReduce<int, BLOCK>;
  struct TempStorage {
    union {
      typename ReduceF64::TempStorage f64;
      typename ReduceInt::TempStorage i32;
    } reduce;
    double f64_result;
    int int_result;
  };

  __device__ static double sum(double v, TempStorage& s) {
    const double total = ReduceF64(s.reduce.f64).Sum(v);
    if (threadIdx.x == 0) s.f64_result = total;
    __syncthreads();
    const double out = s.f64_result;
    __syncthreads();
    return out;
  }

  __device__ static int sum(int v, TempStorage& s) {
    const int total = ReduceInt(s.reduce.i32).Sum(v);
    if (threadIdx.x == 0) s.int_result = total;
    __syncthreads();
    const int out = s.int_result;
    __syncthreads();
    return out;
  }

  __device__ static int max(int v, TempStorage& s) {
    const int best = ReduceInt(s.reduce.i32).Reduce(v, MaxOp{});
    if (threadIdx.x == 0) s.int_result = best;
    __syncthreads();
    const int out = s.int_result;
    __syncthreads();
    return out;
  }

  struct MaxOp {
    __device__ int operator()(int a, int b) const { return a > b ? a : b; }
  };
};

// ---------------------------------------------------------------------------------------------
// Vector loads: ITEMS consecutive entries of a row in one aligned load when the address allows it (row
// starts are aligned when V is a multiple of ITEMS), element by element at the row's end or otherwise.
template <class T, int ITEMS>
struct alignas(sizeof(T) * ITEMS) Pack {
  T v[ITEMS];
};

template <class T, int ITEMS>
__device__ __forceinline__ Pack<T, ITEMS> load_pack(const T* row, int j0, int vocab) {
  Pack<T, ITEMS> out;
  if (j0 + ITEMS <= vocab && (reinterpret_cast<uintptr_t>(row + j0) % sizeof(Pack<T, ITEMS>)) == 0) {
    out = *reinterpret_cast<const Pack<T, ITEMS>*>(row + j0);
  } else {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if (j0 + i < vocab) {
        out.v[i] = row[j0 + i];
      } else {
        set_zero(out.v[i]);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Inverse-CDF sampling over weights w(0..V-1) >= 0, never materialised: the smallest j with w_j > 0 and
// cumsum_j > u * total (verify_math.h cdf_crosses), else the largest j with w_j > 0, else -1 (the caller
// falls back or reports the row). Sums are float64. The row is walked in tiles of BLOCK * ITEMS (blocked
// arrangement: thread t owns ITEMS consecutive indices, so a tile is one vector load per thread); the
// weights come from a tile loader load(j0, w[ITEMS]) that fills w for j0 .. j0 + ITEMS - 1 (0 past V).
// Pass A computes the total and the last non-zero index, pass B rescans tile by tile and stops at the
// crossing tile. Both passes form the tile aggregates with the same BlockScan, so the prefix before every
// tile is bit-identical in both. A parallel scan can be non-monotone by an ulp across thread boundaries;
// cdf_crosses never returns a zero-weight token, as the sequential reference never does.
template <int BLOCK, int ITEMS>
struct InverseCdf {
  static constexpr int kTile = BLOCK * ITEMS;
  using Scan = cub::BlockScan<double, BLOCK, cub::BLOCK_SCAN_WARP_SCANS>;
  using ReduceInt = cub::BlockReduce<int, BLOCK>;
  struct TempStorage {
    union {
      typename Scan::TempStorage scan;
      typename ReduceInt::TempStorage reduce;
    } cub;
    int found;
    int last_nonzero;
  };

  struct MaxOp {
    __device__ int operator()(int a, int b) const { return a > b ? a : b; }
  };

  // Pass A: returns the total; *last_nonzero = largest j with w_j > 0, or -1.
  template <class Loader>
  __device__ static double total(const Loader& load, int vocab, int* last_nonzero, TempStorage& s) {
    double prefix = 0.0;
    int last = -1;
    for (int base = 0; base < vocab; base += kTile) {
      const int j0 = base + static_cast<int>(threadIdx.x) * ITEMS;
      double w[ITEMS];
      load(j0, w);
      double local = 0.0;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        local += w[i];
        if (w[i] > 0.0) last = j0 + i;
      }
      double exclusive, aggregate;
      Scan(s.cub.scan).ExclusiveSum(local, exclusive, aggregate);
      __syncthreads();  // scan storage is reused by the next tile
      prefix += aggregate;
    }
    const int best = ReduceInt(s.cub.reduce).Reduce(last, MaxOp{});
    if (threadIdx.x == 0) s.last_nonzero = best;
    __syncthreads();
    *last_nonzero = s.last_nonzero;
    __syncthreads();
    return prefix;
  }

  // Pass B: the first j with w_j > 0 and cumsum_j > threshold; else last_nonzero (-1 if none).
  template <class Loader>
  __device__ static int search(const Loader& load, int vocab, double threshold, int last_nonzero, TempStorage& s) {
    if (threadIdx.x == 0) s.found = INT_MAX;
    __syncthreads();
    double prefix = 0.0;
    for (int base = 0; base < vocab; base += kTile) {
      const int j0 = base + static_cast<int>(threadIdx.x) * ITEMS;
      double v[ITEMS];
      load(j0, v);
      double local = 0.0;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) local += v[i];
      double exclusive, aggregate;
      Scan(s.cub.scan).ExclusiveSum(local, exclusive, aggregate);
      double running = exclusive;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        running += v[i];
        if (j0 + i < vocab && cdf_crosses(prefix + running, threshold, v[i])) {
          atomicMin(&s.found, j0 + i);  // per thread the first hit is its smallest; the block keeps the min
          break;
        }
      }
      __syncthreads();
      if (s.found != INT_MAX) break;  // uniform: read after the barrier
      prefix += aggregate;
    }
    const int found = s.found;
    __syncthreads();
    return found != INT_MAX ? found : last_nonzero;
  }

  // Both passes: sample(w, u), -1 if every weight is zero.
  template <class Loader>
  __device__ static int sample(const Loader& load, int vocab, float u, TempStorage& s) {
    int last_nonzero;
    const double tot = total(load, vocab, &last_nonzero, s);
    return search(load, vocab, static_cast<double>(u) * tot, last_nonzero, s);
  }
};

// Tile loader from a per-element weight functor w(j) -> float64 (rows held in float64 scratch).
template <int ITEMS, class Weight>
struct ElementLoader {
  Weight weight;
  int vocab;
  __device__ void operator()(int j0, double (&w)[ITEMS]) const {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) w[i] = j0 + i < vocab ? weight(j0 + i) : 0.0;
  }
};

// Tile loader over one probability row stored as T, with vector loads; sets *bad when an entry read is
// not a usable probability (status code 6).
template <int ITEMS, class T>
struct ProbRowLoader {
  const T* row;
  int vocab;
  bool* bad;
  __device__ void operator()(int j0, double (&w)[ITEMS]) const {
    const Pack<T, ITEMS> pack = load_pack<T, ITEMS>(row, j0, vocab);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      w[i] = static_cast<double>(to_float(pack.v[i]));
      if (j0 + i < vocab && !valid_probability(w[i])) *bad = true;
    }
  }
};

// ---------------------------------------------------------------------------------------------
// LANTERN relaxed mass of candidate x under row r (docs/ALGORITHMS.md §3.4), computed by one full warp
// (every lane gets the same result): c_m = c_{m-1} + r(n_m) accumulated sequentially in float64 in
// table order, m* = the longest prefix with c_m <= budget (budget = delta, or (lam - 1) * r(x)).
// Lanes gather 32 neighbour probabilities at a time (the next chunk is loaded before the current one
// is summed); the sequential sum itself runs redundantly in every lane via shuffles, so the early exit
// is warp-uniform. r(j) returns float64.
template <class Row>
__device__ double warp_relaxed_mass(const Row& r, int x, const int32_t* neighbor_row, int k, const LanternConfig& cfg,
                                    int* merged) {
  const int lane = static_cast<int>(threadIdx.x) & (kWarp - 1);
  const double rx = r(x);
  RelaxedPrefix prefix(lantern_budget(cfg, rx));  // the same step as the CPU kernel (verify_math.h)
  double v = lane < k ? r(neighbor_row[lane]) : 0.0;
  for (int base = 0; base < k && prefix.open; base += kWarp) {
    const int next_m = base + kWarp + lane;
    const double v_next = next_m < k ? r(neighbor_row[next_m]) : 0.0;
    const int count = min(kWarp, k - base);
    for (int i = 0; i < count; ++i) {
      if (!prefix.add(__shfl_sync(kFullMask, v, i))) break;  // uniform: every lane holds the same prefix
    }
    v = v_next;
  }
  *merged = static_cast<int>(prefix.merged);
  return rx + prefix.mass;
}

// Sequential float64 sum of r(idx[0..count)) by one full warp (same result in every lane).
template <class Row>
__device__ double warp_gather_sum(const Row& r, const int32_t* idx, int count) {
  const int lane = static_cast<int>(threadIdx.x) & (kWarp - 1);
  double total = 0.0;
  for (int base = 0; base < count; base += kWarp) {
    const double v = base + lane < count ? r(idx[base + lane]) : 0.0;
    const int n = min(kWarp, count - base);
    for (int i = 0; i < n; ++i) total += __shfl_sync(kFullMask, v, i);
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Block-wide radix selection over n candidates with distinct 64-bit keys (bits [0, num_bits)), for up
// to two independent queries at once. query_of(j, key) says which query's candidate set j belongs to
// (0, 1, or -1 for none; the sets are disjoint); for each active query q the result is the key with
// exactly rank[q] smaller keys in its set (rank[q] < set size is the caller's invariant). MSB-first
// 8-bit digits: per pass one shared histogram per query (warp-aggregated atomics: many equal keys,
// e.g. the zero-probability tail, would otherwise serialise on one bin) and a one-warp digit search
// per query. Cost: ceil(num_bits / 8) passes over the candidates; keys are recomputed every pass.
template <int BLOCK>
struct RadixSelect {
  static_assert(BLOCK >= 2 * kWarp && BLOCK % kWarp == 0, "the digit search uses warps 0 and 1");
  static constexpr int kBins = 256;
  struct TempStorage {
    unsigned int hist[2 * kBins];
    unsigned long long prefix[2];
    unsigned long long mask[2];
    unsigned int remaining[2];
  };

  template <class KeyOf, class QueryOf>
  __device__ static void run(int n, int num_bits, const KeyOf& key_of, const QueryOf& query_of, bool active0,
                             unsigned rank0, bool active1, unsigned rank1, TempStorage& s) {
    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid & (kWarp - 1);
    if (tid == 0) {
      s.prefix[0] = s.prefix[1] = 0ull;
      s.mask[0] = s.mask[1] = 0ull;
      s.remaining[0] = rank0;
      s.remaining[1] = rank1;
    }
    const int top = (num_bits + 7) / 8 * 8;
    for (int shift = top - 8; shift >= 0; shift -= 8) {
      for (int i = tid; i < 2 * kBins; i += BLOCK) s.hist[i] = 0u;
      __syncthreads();
      const unsigned long long prefix0 = s.prefix[0], prefix1 = s.prefix[1];
      const unsigned long long mask0 = s.mask[0], mask1 = s.mask[1];
      for (int base = 0; base < n; base += BLOCK) {  // uniform trip count: warps stay converged
        const int j = base + tid;
        int bin = -1;
        if (j < n) {
          const unsigned long long key = key_of(j);
          const int q = query_of(j, key);
          const bool match = q == 0 ? (active0 && (key & mask0) == prefix0) : (active1 && (key & mask1) == prefix1);
          if (q >= 0 && match) bin = q * kBins + static_cast<int>((key >> shift) & 0xffull);
        }
        const unsigned peers = __match_any_sync(kFullMask, bin);
        if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&s.hist[bin], static_cast<unsigned>(__popc(peers)));
      }
      __syncthreads();
      const int warp = tid / kWarp;
      if (warp < 2 && (warp == 0 ? active0 : active1)) {  // lane l scans bins 8l .. 8l+7 of query `warp`
        const unsigned* h = s.hist + warp * kBins + lane * 8;
        unsigned counts[8];
        unsigned lane_total = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          counts[i] = h[i];
          lane_total += counts[i];
        }
        unsigned inclusive = lane_total;
#pragma unroll
        for (int offset = 1; offset < kWarp; offset <<= 1) {
          const unsigned up = __shfl_up_sync(kFullMask, inclusive, offset);
          if (lane >= offset) inclusive += up;
        }
        unsigned before = inclusive - lane_total;
        const unsigned r = s.remaining[warp];
        __syncwarp();  // every lane has read `remaining` before the owner of the digit rewrites it
        if (r >= before && r < inclusive) {  // exactly one lane holds the digit
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            if (r < before + counts[i]) {
              s.prefix[warp] |= static_cast<unsigned long long>(lane * 8 + i) << shift;
              s.remaining[warp] = r - before;
              break;
            }
            before += counts[i];
          }
        }
        if (lane == 0) s.mask[warp] |= 0xffull << shift;
      }
      __syncthreads();
    }
  }

  __device__ static unsigned long long result(int q, const TempStorage& s) { return s.prefix[q]; }
};

}  // namespace specdec::gpu
