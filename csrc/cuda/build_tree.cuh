// Tree buffers from parent arrays (docs/ALGORITHMS.md §3.5; reference: specdec_kernels/reference/build_tree.py),
// torch-free kernel and launcher. The number of leaves P and the depth H are data-dependent: the kernel
// fills fixed [B, M, M] path buffers and reports the batch maxima (and malformed trees) through a small
// int32 stats array; the caller copies those three ints to the host and slices.
#pragma once

#include "verify_common.cuh"

namespace specdec::gpu {

// stats[0] = max leaves, stats[1] = max path length (depth + 1), stats[2] = error bits (below).
// The caller zero-initialises stats; blocks combine with atomicMax / atomicOr.
enum BuildTreeError : int { kTreeBadNumNodes = 1, kTreeBadRoot = 2, kTreeBadParent = 4 };

constexpr int kBuildTreeBlock = 256;

// Grid: one block per tree b. Pointers (row-major, contiguous):
//   parents [B, M] int64, num_nodes [B] int64;
//   mask [B, M, M] bool (written entirely), position_ids [B, M] int64 (written entirely),
//   retrieve [B, M, M] int64: row l = path of the l-th leaf (ascending node id), root first, -1 padded;
//   stats [3] int32 (see above).
// Dynamic shared memory: 3 * M ints (depth, has_child, leaf index).
// A malformed tree (num_nodes outside [1, M], parents[0] != -1, or parents[n] outside [0, n) for a valid
// n) sets its error bits and writes nothing else: the caller raises before reading any output. Once
// parents[n] < n holds, every ancestor walk terminates at the root. One thread per node walks its
// ancestors (mask row, depth; M is small); leaf order comes from a block scan of the leaf flags.
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    BuildTreeKernel(const int64_t* parents, const int64_t* num_nodes, int m, bool* mask, int64_t* position_ids,
                    int64_t* retrieve, int* stats) {
  using Scan = cub::BlockScan<int, BLOCK>;
  using Sum = BlockSum<BLOCK>;
  union Storage {
    typename Scan::TempStorage scan;
    typename Sum::TempStorage sum;
  };
  __shared__ Storage storage;
  int* tree_smem = dynamic_smem<int>();
  int* depth = tree_smem;
  int* has_child = tree_smem + m;
  int* leaf_index = tree_smem + 2 * m;

  const int tid = static_cast<int>(threadIdx.x);
  const int64_t b = blockIdx.x;
  const int64_t* par = parents + b * m;
  const int64_t requested = num_nodes[b];

  int bad = 0;
  if (requested < 1 || requested > m) {
    bad = kTreeBadNumNodes;
  } else {
    if (tid == 0 && par[0] != -1) bad |= kTreeBadRoot;
    for (int64_t n = 1 + tid; n < requested; n += BLOCK)
      if (par[n] < 0 || par[n] >= n) bad |= kTreeBadParent;
  }
  if (__syncthreads_or(bad)) {  // uniform exit
    if (bad) atomicOr(&stats[2], bad);
    return;
  }
  const int n_b = static_cast<int>(requested);
  const int64_t mm = static_cast<int64_t>(m) * m;

  bool* mask_b = mask + b * mm;
  int64_t* retrieve_b = retrieve + b * mm;
  for (int n = tid; n < m; n += BLOCK) has_child[n] = 0;
  for (int64_t i = tid; i < mm; i += BLOCK) {
    mask_b[i] = false;
    retrieve_b[i] = -1;
  }
  __syncthreads();
  for (int n = 1 + tid; n < n_b; n += BLOCK) atomicOr(&has_child[par[n]], 1);  // siblings share a parent
  for (int n = tid; n < m; n += BLOCK) {
    int d = 0;
    bool* row = mask_b + static_cast<int64_t>(n) * m;
    row[n] = true;  // padding nodes see only themselves
    if (n < n_b) {
      for (int a = n; a != 0; ++d) {
        a = static_cast<int>(par[a]);
        row[a] = true;
      }
    }
    depth[n] = d;
    position_ids[b * m + n] = d;
  }
  __syncthreads();

  int running = 0;
  for (int base = 0; base < m; base += BLOCK) {  // leaf index = exclusive prefix count of leaves
    const int n = base + tid;
    const int leaf = (n < n_b && !has_child[n]) ? 1 : 0;
    int before, tile_leaves;
    Scan(storage.scan).ExclusiveSum(leaf, before, tile_leaves);
    if (n < m) leaf_index[n] = leaf ? running + before : -1;
    __syncthreads();
    running += tile_leaves;
  }
  const int leaves = running;

  int longest = 0;
  for (int n = tid; n < n_b; n += BLOCK) {
    longest = max(longest, depth[n] + 1);
    if (leaf_index[n] < 0) continue;
    int64_t* path = retrieve_b + static_cast<int64_t>(leaf_index[n]) * m;
    int a = n;
    for (int level = depth[n]; level >= 0; --level) {
      path[level] = a;
      if (level > 0) a = static_cast<int>(par[a]);
    }
  }
  const int path_len = Sum::max(longest, storage.sum);
  if (tid == 0) {
    atomicMax(&stats[0], leaves);
    atomicMax(&stats[1], path_len);
  }
}

inline size_t BuildTreeSmemBytes(int m) { return static_cast<size_t>(3) * m * sizeof(int); }

inline cudaError_t BuildTree(const int64_t* parents, const int64_t* num_nodes, int64_t batch, int m, bool* mask,
                             int64_t* position_ids, int64_t* retrieve, int* stats, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  const size_t smem = BuildTreeSmemBytes(m);
  auto kernel = BuildTreeKernel<kBuildTreeBlock>;
  const cudaError_t status = ensure_dynamic_smem(kernel, smem);
  if (status != cudaSuccess) return status;
  kernel<<<static_cast<unsigned>(batch), kBuildTreeBlock, smem, stream>>>(parents, num_nodes, m, mask, position_ids,
                                                                          retrieve, stats);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
