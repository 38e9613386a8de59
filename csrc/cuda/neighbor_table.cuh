// LANTERN neighbour table (docs/ALGORITHMS.md §3.4; reference: specdec_kernels/reference/neighbor_table.py),
// torch-free kernels and launcher. Built once per model, never per step: simplicity over peak speed.
#pragma once

#include <cub/block/block_radix_sort.cuh>

#include "verify_common.cuh"

namespace specdec::gpu {

// Rows divided by max(||row||, 1e-12) like torch.nn.functional.normalize (norm accumulated in float64,
// rounded to float32 once, then an IEEE division). Grid: one thread per row.
//   in, out [n, dim] float32
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK) NormalizeRowsKernel(const float* in, int n, int dim, float* out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  const float* x = in + row * dim;
  double sq = 0.0;
  for (int d = 0; d < dim; ++d) sq += static_cast<double>(x[d]) * static_cast<double>(x[d]);  // exact products
  const float norm = fmaxf(static_cast<float>(sqrt(sq)), 1e-12f);
  for (int d = 0; d < dim; ++d) out[row * dim + d] = __fdiv_rn(x[d], norm);
}

constexpr int kNeighborBlock = 256;
constexpr int kNeighborItems = 4;
constexpr int kNeighborMaxGrid = 256;  // bounds the distance scratch at kNeighborMaxGrid * n floats

// Grid: min(n, kNeighborMaxGrid) blocks, each looping over rows row = blockIdx.x, + gridDim.x, ...
//   emb [n, dim] float32 (already normalised if requested); dist_scratch [gridDim.x, n] float32 (one row
//   per block); out [n, k] int32. Dynamic shared memory: dim floats (the current row's embedding).
// Per row: squared distances to every code (sequential float32 over dim, no FMA contraction, as the CPU
// kernel), then the k smallest keys (bits(dist) << id_bits) | j - ascending distance, ties to the lower
// id, all distinct - are emitted in chunks of TILE = BLOCK * ITEMS: a radix selection finds the key of
// rank c1 - 1 (the chunk's last), the keys in (previous bound, that key] are gathered into shared memory
// (exactly c1 - c0 of them) and sorted with BlockRadixSort. Self is never a candidate; k in [1, n - 1].
template <int BLOCK, int ITEMS>
__global__ void __launch_bounds__(BLOCK)
    NeighborTableKernel(const float* emb, int n, int dim, int k, float* dist_scratch, int32_t* out) {
  constexpr int kTile = BLOCK * ITEMS;
  using Sort = cub::BlockRadixSort<unsigned long long, BLOCK, ITEMS>;
  using Select = RadixSelect<BLOCK>;
  union Storage {
    typename Sort::TempStorage sort;
    typename Select::TempStorage select;
  };
  __shared__ Storage storage;
  __shared__ unsigned long long tile[kTile];
  __shared__ int s_count;
  float* e_row = dynamic_smem<float>();

  const int tid = static_cast<int>(threadIdx.x);
  float* dist = dist_scratch + static_cast<int64_t>(blockIdx.x) * n;
  const int id_bits = index_bits(n);
  const int num_bits = 32 + id_bits;
  const unsigned long long id_mask = (1ull << id_bits) - 1ull;
  const unsigned long long pad = (1ull << num_bits) - 1ull;  // above every real key (those have dist < NaN)

  for (int row = blockIdx.x; row < n; row += gridDim.x) {
    for (int d = tid; d < dim; d += BLOCK) e_row[d] = emb[static_cast<int64_t>(row) * dim + d];
    __syncthreads();
    for (int j = tid; j < n; j += BLOCK) {
      const float* ej = emb + static_cast<int64_t>(j) * dim;
      float acc = 0.0f;
      for (int d = 0; d < dim; ++d) {
        const float diff = __fsub_rn(e_row[d], ej[d]);
        acc = __fadd_rn(acc, __fmul_rn(diff, diff));
      }
      dist[j] = acc;
    }
    __syncthreads();

    auto key_of = [&](int j) -> unsigned long long {
      return (static_cast<unsigned long long>(nonneg_float_bits(dist[j])) << id_bits) |
             static_cast<unsigned long long>(j);
    };
    auto query_of = [row](int j, unsigned long long) { return j == row ? -1 : 0; };
    unsigned long long lower = 0ull;
    for (int c0 = 0; c0 < k; c0 += kTile) {
      const int c1 = min(c0 + kTile, k);
      Select::run(n, num_bits, key_of, query_of, true, static_cast<unsigned>(c1 - 1), false, 0u, storage.select);
      const unsigned long long upper = Select::result(0, storage.select);
      if (tid == 0) s_count = 0;
      __syncthreads();  // also: everyone has read `upper` before the sort reuses the storage
      for (int j = tid; j < n; j += BLOCK) {
        if (j == row) continue;
        const unsigned long long key = key_of(j);
        if (key <= upper && (c0 == 0 || key > lower)) tile[atomicAdd(&s_count, 1)] = key;
      }
      __syncthreads();
      const int count = c1 - c0;  // == s_count: keys are distinct
      unsigned long long keys[ITEMS];
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int pos = tid * ITEMS + i;
        keys[i] = pos < count ? tile[pos] : pad;
      }
      Sort(storage.sort).Sort(keys, 0, num_bits);  // blocked arrangement: thread t holds ranks t*ITEMS + i
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int pos = tid * ITEMS + i;
        if (pos < count) out[static_cast<int64_t>(row) * k + c0 + pos] = static_cast<int32_t>(keys[i] & id_mask);
      }
      __syncthreads();  // tile and storage are reused by the next chunk / row
      lower = upper;
    }
  }
}

// Code 6 (methods.h): a code whose raw codebook row holds NaN / inf gets the table row -6 (one O(n * dim)
// pass, launched after the table on the same stream). Grid: one thread per code.
//   codebook [n, dim] float32; out [n, k] int32
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK) MarkNonFiniteRowsKernel(const float* codebook, int n, int dim, int k,
                                                                int32_t* out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * BLOCK + threadIdx.x;
  if (row >= n || !has_non_finite(codebook + row * dim, dim)) return;
  for (int m = 0; m < k; ++m) out[row * k + m] = static_cast<int32_t>(-kBadProbability);
}

inline int NeighborTableGrid(int n) { return n < kNeighborMaxGrid ? n : kNeighborMaxGrid; }

// Float32 workspace the launcher needs: per-block distance rows, plus the normalised codebook.
inline size_t NeighborTableWorkspaceFloats(int n, int dim, bool normalize) {
  return static_cast<size_t>(NeighborTableGrid(n)) * n + (normalize ? static_cast<size_t>(n) * dim : 0);
}

//   codebook [n, dim] float32; workspace >= NeighborTableWorkspaceFloats floats; out [n, k] int32.
inline cudaError_t NeighborTable(const float* codebook, int n, int dim, int k, bool normalize, float* workspace,
                                 int32_t* out, cudaStream_t stream) {
  if (n == 0 || k == 0) return cudaSuccess;
  float* dist = workspace;
  const float* emb = codebook;
  if (normalize) {
    float* normalized = workspace + static_cast<size_t>(NeighborTableGrid(n)) * n;
    constexpr int kBlock = 128;
    NormalizeRowsKernel<kBlock><<<(n + kBlock - 1) / kBlock, kBlock, 0, stream>>>(codebook, n, dim, normalized);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
    emb = normalized;
  }
  const size_t smem = static_cast<size_t>(dim) * sizeof(float);
  auto kernel = NeighborTableKernel<kNeighborBlock, kNeighborItems>;
  const cudaError_t status = ensure_dynamic_smem(kernel, smem);
  if (status != cudaSuccess) return status;
  kernel<<<NeighborTableGrid(n), kNeighborBlock, smem, stream>>>(emb, n, dim, k, dist, out);
  const cudaError_t launched = cudaGetLastError();
  if (launched != cudaSuccess) return launched;
  constexpr int kMarkBlock = 128;
  MarkNonFiniteRowsKernel<kMarkBlock><<<(n + kMarkBlock - 1) / kMarkBlock, kMarkBlock, 0, stream>>>(codebook, n, dim,
                                                                                                  k, out);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
