// LANTERN / LANTERN++ relaxed mass (docs/ALGORITHMS.md §3.4; reference:
// specdec_kernels/reference/lantern_relaxed_mass.py), torch-free kernel and launcher. The warp-level
// routine itself (warp_relaxed_mass) lives in verify_common.cuh: verify_chain and verify_tree share it.
#pragma once

#include "verify_common.cuh"

namespace specdec::gpu {

// Row accessor: probabilities stored as T, read as float64.
template <class T>
struct ProbRow {
  const T* row;
  __device__ double operator()(int64_t j) const { return prob64(row, j); }
};

// Grid: one warp per row, WARPS rows per block; a warp past the last row exits as a whole.
//   p          [rows, vocab] T
//   x          [rows] int64 candidates in [0, vocab)
//   neighbors  [vocab, k] int32, nearest first, no self entries
//   p_tilde    [rows] float32 = p(x) + c_{m*} (float64, rounded once); merged [rows] int32 = m*
// budget is delta (use_lambda false) or lam (use_lambda true).
constexpr int kRelaxedWarps = 4;

template <int WARPS, class T>
__global__ void __launch_bounds__(WARPS * kWarp)
    LanternRelaxedMassKernel(const T* p, const int64_t* x, const int32_t* neighbors, int64_t rows, int vocab, int k,
                             bool use_lambda, double budget, float* p_tilde, int32_t* merged) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * WARPS + threadIdx.x / kWarp;
  if (row >= rows) return;
  const int xr = static_cast<int>(x[row]);
  int m = 0;
  const double pt = warp_relaxed_mass(ProbRow<T>{p + row * vocab}, xr, neighbors + static_cast<int64_t>(xr) * k, k,
                                      use_lambda, budget, &m);
  if ((threadIdx.x & (kWarp - 1)) == 0) {
    p_tilde[row] = static_cast<float>(pt);
    merged[row] = m;
  }
}

template <class T>
cudaError_t LanternRelaxedMass(const T* p, const int64_t* x, const int32_t* neighbors, int64_t rows, int vocab, int k,
                               bool use_lambda, double budget, float* p_tilde, int32_t* merged, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = (rows + kRelaxedWarps - 1) / kRelaxedWarps;
  LanternRelaxedMassKernel<kRelaxedWarps, T><<<static_cast<unsigned>(blocks), kRelaxedWarps * kWarp, 0, stream>>>(
      p, x, neighbors, rows, vocab, k, use_lambda, budget, p_tilde, merged);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
