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
//   x          [rows] int64 candidates
//   neighbors  [vocab, k] int32, nearest first, no self entries
//   p_tilde    [rows] float32 = p(x) + c_{m*} (float64, rounded once); merged [rows] int32 = m*
// A candidate outside [0, vocab) or a bad neighbour row (methods.h codes 2, 4) is not dereferenced, and a
// NaN / inf / negative p among the entries the scan read (p(x) and n_1 .. n_{min(m* + 1, k)}; code 6) is
// reported: p_tilde = NaN, merged = -code.
// budget is delta (use_lambda false) or lam (use_lambda true).
constexpr int kRelaxedWarps = 4;

template <int WARPS, class T>
__global__ void __launch_bounds__(WARPS * kWarp)
    LanternRelaxedMassKernel(const T* p, const int64_t* x, const int32_t* neighbors, int64_t rows, int vocab, int k,
                             LanternConfig cfg, float* p_tilde, int32_t* merged) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * WARPS + threadIdx.x / kWarp;
  if (row >= rows) return;
  const int64_t candidate = x[row];
  const int64_t status = token_status(candidate, vocab, 0.0f, neighbors, k);  // per lane, same answer
  if (status != kRowOk) {
    if ((threadIdx.x & (kWarp - 1)) == 0) {
      p_tilde[row] = __int_as_float(0x7fc00000);  // NaN
      merged[row] = static_cast<int32_t>(-status);
    }
    return;
  }
  const int xr = static_cast<int>(candidate);
  int m = 0;
  const ProbRow<T> r{p + row * static_cast<int64_t>(vocab)};
  const int32_t* nb_row = neighbors + static_cast<int64_t>(xr) * k;
  const double pt = warp_relaxed_mass(r, xr, nb_row, k, cfg, &m);
  // Code 6 (verify_math.h relaxed_mass_status, spread over the lanes): every entry the scan read is usable.
  const int lane = static_cast<int>(threadIdx.x) & (kWarp - 1);
  const int read = min(m + 1, k);
  bool bad = lane == 0 && !valid_probability(r(xr));
  for (int i = lane; i < read; i += kWarp) bad = bad || !valid_probability(r(nb_row[i]));
  const bool any_bad = __any_sync(kFullMask, bad);
  if (lane == 0) {
    p_tilde[row] = any_bad ? __int_as_float(0x7fc00000) : static_cast<float>(pt);
    merged[row] = any_bad ? static_cast<int32_t>(-kBadProbability) : m;
  }
}

template <class T>
cudaError_t LanternRelaxedMass(const T* p, const int64_t* x, const int32_t* neighbors, int64_t rows, int vocab, int k,
                               LanternConfig cfg, float* p_tilde, int32_t* merged, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = (rows + kRelaxedWarps - 1) / kRelaxedWarps;
  LanternRelaxedMassKernel<kRelaxedWarps, T><<<static_cast<unsigned>(blocks), kRelaxedWarps * kWarp, 0, stream>>>(
      p, x, neighbors, rows, vocab, k, cfg, p_tilde, merged);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
