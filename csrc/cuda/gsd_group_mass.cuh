// GSD's dynamic group mass (docs/ALGORITHMS.md §3.3; reference: specdec_kernels/reference/gsd_group_mass.py),
// torch-free: the block-level routine shared with verify_chain, the gsd_group_mass kernel and its
// launcher.
#pragma once

#include "row_sources.cuh"

namespace specdec::gpu {

struct GroupMass {
  double p;
  double q;
  bool values_ok;  // every ranked p entry and the q entry of every member is a usable probability
  // Every embedding row whose distance was computed (x's and each window member's that passed the
  // probability filter) is finite; reported as code 6 by the gsd_group_mass op.
  bool embeddings_ok;
};

// (P_G, Q_G) of draft x under one row, by a whole block. p_row / q_row are rows of a source (row_sources.cuh:
// entry j as float32 where it is read); q_row nullptr means one-hot drafts (Q_G = 1). Rank order = p descending,
// ties by lower id, encoded as distinct 64-bit keys A(j) = (bits(p_j) << id_bits) | (id_mask - j): a larger key
// ranks first. The window is the h_hi keys just above A(x) and the h_lo keys just below, found without a sort:
//   1. count_above = #{A(j) > A(x)} (an O(V) block count);
//   2. if a side holds more candidates than its half-width, one radix selection finds its boundary key
//      (above: the h_hi-th smallest key above A(x); below: the h_lo-th largest key below) - both sides
//      share the same passes;
//   3. one pass keeps the members passing |p_j - p_x| < p_thr and (with a table) a squared distance
//      < d_thr computed on the fly in float32 without FMA contraction, and sums p and q in float64.
// x is always a member. Sums are per-thread then a fixed-shape block reduction (deterministic; the
// reference's summation order differs only in float64 rounding, which the float32 inputs of a window
// practically never reach).
template <int BLOCK>
struct GroupMassBlock {
  using Sum = BlockSum<BLOCK>;
  using Select = RadixSelect<BLOCK>;
  struct TempStorage {
    typename Sum::TempStorage sum;
    typename Select::TempStorage select;
  };

  template <class PRow, class QRow>
  __device__ static GroupMass run(const PRow& p_row, const QRow* q_row, int vocab, int x, const GsdParams& g,
                                  TempStorage& s) {
    const int tid = static_cast<int>(threadIdx.x);
    const int id_bits = index_bits(vocab);
    const unsigned long long id_mask = (1ull << id_bits) - 1ull;
    auto key_of = [&](int j) -> unsigned long long {
      return (static_cast<unsigned long long>(nonneg_float_bits(p_row(j))) << id_bits) |
             (id_mask - static_cast<unsigned long long>(j));
    };
    const float px = p_row(x);
    const unsigned long long kx = key_of(x);

    int local_above = 0;
    bool bad = false;
    for (int j = tid; j < vocab; j += BLOCK) {
      local_above += key_of(j) > kx ? 1 : 0;
      bad = bad || !valid_probability(p_row(j));
    }
    const bool p_ok = !__syncthreads_or(bad);
    const int count_above = Sum::sum(local_above, s.sum);
    const int count_below = vocab - 1 - count_above;

    const bool select_hi = g.h_hi > 0 && g.h_hi < count_above;
    const bool select_lo = g.h_lo > 0 && g.h_lo < count_below;
    unsigned long long t_hi = ~0ull, t_lo = 0ull;  // inclusive bounds of the window's keys
    if (select_hi || select_lo) {
      auto query_of = [kx](int, unsigned long long key) { return key > kx ? 0 : (key < kx ? 1 : -1); };
      Select::run(vocab, 32 + id_bits, key_of, query_of, select_hi, static_cast<unsigned>(g.h_hi - 1), select_lo,
                  static_cast<unsigned>(count_below - g.h_lo), s.select);
      if (select_hi) t_hi = Select::result(0, s.select);
      if (select_lo) t_lo = Select::result(1, s.select);
    }

    double sum_p = 0.0, sum_q = 0.0;
    bool emb_bad = false;
    for (int j = tid; j < vocab; j += BLOCK) {
      const unsigned long long key = key_of(j);
      bool keep;
      if (j == x) {
        keep = true;
      } else {
        const bool member = key > kx ? (g.h_hi > 0 && key <= t_hi) : (g.h_lo > 0 && key >= t_lo);
        keep = member && gsd_close_in_probability(p_row(j), px, g.p_thr);
        if (keep && g.emb != nullptr) {  // sequential float32, as the reference and the CPU kernel
          const float* e_j = g.emb + static_cast<int64_t>(j) * g.emb_dim;
          const float* e_x = g.emb + static_cast<int64_t>(x) * g.emb_dim;
          emb_bad = emb_bad || has_non_finite(e_j, g.emb_dim) || has_non_finite(e_x, g.emb_dim);
          keep = gsd_close_in_embedding(e_j, e_x, g.emb_dim, g.d_thr);
        }
      }
      if (keep) {
        sum_p += static_cast<double>(p_row(j));
        if (q_row != nullptr) {
          const double qj = static_cast<double>((*q_row)(j));
          bad = bad || !valid_probability(qj);
          sum_q += qj;
        }
      }
    }
    const bool q_ok = !__syncthreads_or(bad);
    const bool emb_ok = g.emb == nullptr || !__syncthreads_or(emb_bad);  // g.emb is uniform over the block
    GroupMass out;
    out.p = Sum::sum(sum_p, s.sum);
    out.q = q_row != nullptr ? Sum::sum(sum_q, s.sum) : 1.0;
    out.values_ok = p_ok && q_ok;
    out.embeddings_ok = emb_ok;
    return out;
  }
};

// ---------------------------------------------------------------------------------------------
// gsd_group_mass op. Grid: one block of BLOCK threads per row.
//   p, q   [rows, vocab] T (q may be nullptr: one-hot drafts, group_q = 1)
//   x      [rows] int64 draft ids; one outside [0, vocab) is not dereferenced
//   group_p, group_q [rows] float32 (float64 sums rounded once); a bad row (methods.h) gets group_p = -code,
//   group_q = NaN: code 2 for x outside [0, vocab), code 6 for a bad value read (GroupMass flags)
constexpr int kGsdBlock = 512;

template <int BLOCK, class T>
__global__ void __launch_bounds__(BLOCK)
    GsdGroupMassKernel(const T* p, const T* q, const int64_t* x, int vocab, GsdParams g, float* group_p,
                       float* group_q) {
  __shared__ typename GroupMassBlock<BLOCK>::TempStorage storage;
  const int64_t row = blockIdx.x;
  const TensorRow<T> p_row{p + row * static_cast<int64_t>(vocab), vocab};
  const TensorRow<T> q_row{q != nullptr ? q + row * static_cast<int64_t>(vocab) : nullptr, vocab};
  const int64_t xr = x[row];
  if (!valid_id(xr, vocab)) {  // uniform
    if (threadIdx.x == 0) {
      group_p[row] = static_cast<float>(-kBadId);
      group_q[row] = __int_as_float(0x7fc00000);  // NaN
    }
    return;
  }
  const GroupMass m =
      GroupMassBlock<BLOCK>::run(p_row, q != nullptr ? &q_row : nullptr, vocab, static_cast<int>(xr), g, storage);
  if (threadIdx.x == 0) {
    const bool ok = m.values_ok && m.embeddings_ok;
    group_p[row] = ok ? static_cast<float>(m.p) : static_cast<float>(-kBadProbability);
    group_q[row] = ok ? static_cast<float>(m.q) : __int_as_float(0x7fc00000);
  }
}

template <class T>
cudaError_t GsdGroupMass(const T* p, const T* q, const int64_t* x, int64_t rows, int vocab, GsdParams g,
                         float* group_p, float* group_q, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  GsdGroupMassKernel<kGsdBlock, T><<<static_cast<unsigned>(rows), kGsdBlock, 0, stream>>>(p, q, x, vocab, g, group_p,
                                                                                          group_q);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
