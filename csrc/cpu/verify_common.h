// Row-level building blocks of the CPU verification kernels (torch-free, host only): how the CPU schedules
// the per-element math of ../verify_math.h (shared with the CUDA kernels) over a row. Semantics:
// docs/ALGORITHMS.md §3 and specdec_kernels/reference; every sum that decides a token is
// accumulated in float64.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../verify_math.h"

namespace specdec::cpu {

// Raw values a sampling pass read: their float64 sum (NaN / inf propagate into it) and their minimum
// (a negative entry shows there). Entries are fed through add().
struct RawValues {
  double sum = 0.0;
  double min = 0.0;
  void add(double v) {
    sum += v;
    min = v < min ? v : min;
  }
  bool ok() const { return valid_probability(sum) && min >= 0.0; }
};

// How a sampling pass checks the raw probabilities it reads (status code 6: NaN, inf or negative).
enum class RowCheck {
  kNone,        // already checked
  kWeightsRaw,  // the weights are the raw entries (except entries known to be usable): their float64 sum is
                // finite and their minimum >= 0 iff they all are usable; both ride in the lane loop
  kUnusable,    // unusable(j) != 0 flags entry j (an OR reduction, one extra vectorised loop per block)
};

// Inverse-CDF sample over weights weight(0..V-1) >= 0: the smallest j with cumsum_j > u * total and
// weight(j) > 0, else the largest j with weight(j) > 0; -1 if every weight is zero (the caller falls back
// or reports the row). The row's raw entries are checked in the same pass as CHECK says, setting `unusable`.
// Sums run in float64. A strictly sequential sum is bound by add latency, so each 64-wide block is summed
// with four interleaved accumulators and the running sum is kept at block ends; the one block that
// crosses the threshold is then re-scanned sequentially. The order differs from the reference's cumsum
// only at float64 rounding level (docs/ALGORITHMS.md §3.8: tokens can differ only within that of a boundary).
template <RowCheck CHECK, class Weight, class Unusable>
int64_t inverse_cdf_impl(int64_t vocab, const Weight& weight, const Unusable& unusable_at, float u,
                         std::vector<double>& block_ends, bool& unusable) {
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (vocab + kBlock - 1) / kBlock;
  block_ends.resize(blocks);
  double cumulative = 0.0;
  double lowest = 0.0;
  int64_t last_nonzero = -1;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = blk * kBlock, end = std::min(vocab, begin + kBlock), n = end - begin;
    // Load the block first: independent loads keep many cache misses in flight (a cold row streams from
    // memory several times faster than when each load waits behind the add chain).
    double w[kBlock];
    for (int64_t i = 0; i < n; ++i) w[i] = weight(begin + i);
    if constexpr (CHECK == RowCheck::kUnusable) {
      uint32_t bad = 0;  // an OR reduction: vectorises, unlike a dependent sum
      for (int64_t i = 0; i < n; ++i) bad |= unusable_at(begin + i);
      unusable = unusable || bad != 0;
    }
    double lane[4] = {0.0, 0.0, 0.0, 0.0};
    double low[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      for (int l = 0; l < 4; ++l) {
        lane[l] += w[i + l];
        if constexpr (CHECK == RowCheck::kWeightsRaw) low[l] = w[i + l] < low[l] ? w[i + l] : low[l];
      }
    }
    for (; i < n; ++i) {
      lane[0] += w[i];
      if constexpr (CHECK == RowCheck::kWeightsRaw) low[0] = w[i] < low[0] ? w[i] : low[0];
    }
    if constexpr (CHECK == RowCheck::kWeightsRaw) {
      const double block_low = std::min(std::min(low[0], low[1]), std::min(low[2], low[3]));
      lowest = block_low < lowest ? block_low : lowest;
    }
    for (int64_t back = n - 1; back >= 0; --back) {
      if (w[back] > 0.0) {
        last_nonzero = begin + back;
        break;
      }
    }
    cumulative += (lane[0] + lane[1]) + (lane[2] + lane[3]);
    block_ends[blk] = cumulative;
  }
  // NaN / inf entries make the float64 sum NaN / inf (a sum of finite float32 values cannot overflow).
  if constexpr (CHECK == RowCheck::kWeightsRaw) unusable = unusable || !(valid_probability(cumulative) && lowest >= 0.0);
  if (last_nonzero < 0 || unusable) return -1;
  const double threshold = static_cast<double>(u) * cumulative;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    if (!(block_ends[blk] > threshold)) continue;
    double c = blk > 0 ? block_ends[blk - 1] : 0.0;
    const int64_t end = std::min(vocab, (blk + 1) * kBlock);
    for (int64_t j = blk * kBlock; j < end; ++j) {
      const double w = weight(j);
      c += w;
      if (cdf_crosses(c, threshold, w)) return j;
    }
  }
  return last_nonzero;
}

// 1 if a raw float32 probability is NaN, inf or negative (-0 is fine), else 0: integer compares on the
// bits, branch-free, so an OR reduction over a row vectorises.
inline uint32_t unusable_probability(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return static_cast<uint32_t>(bits > 0x7f7fffffu) & static_cast<uint32_t>(bits != 0x80000000u);
}

inline uint32_t no_check(int64_t) { return 0u; }

// Weights that are the raw entries themselves (checked through the lane loop).
template <class Weight>
int64_t inverse_cdf_raw(int64_t vocab, const Weight& weight, float u, std::vector<double>& block_ends,
                        bool& unusable) {
  return inverse_cdf_impl<RowCheck::kWeightsRaw>(vocab, weight, no_check, u, block_ends, unusable);
}

// Weights derived from raw entries that unusable_at(j) checks.
template <class Weight, class Unusable>
int64_t inverse_cdf(int64_t vocab, const Weight& weight, const Unusable& unusable_at, float u,
                    std::vector<double>& block_ends, bool& unusable) {
  return inverse_cdf_impl<RowCheck::kUnusable>(vocab, weight, unusable_at, u, block_ends, unusable);
}

// Without value checks (rows already checked).
template <class Weight>
int64_t inverse_cdf(int64_t vocab, const Weight& weight, float u, std::vector<double>& block_ends) {
  bool unused = false;
  return inverse_cdf_impl<RowCheck::kNone>(vocab, weight, no_check, u, block_ends, unused);
}

struct GroupMass {
  double p;
  double q;
  bool values_ok;  // every ranked p entry and every q entry of a group member is a usable probability
  // Every embedding row whose distance was computed (x's and each window member's that passed the
  // probability filter) is finite. Reported as code 6 by the gsd_group_mass op.
  bool embeddings_ok = true;
};

// GSD's dynamic group around x: the h_hi tokens ranked just above x and the h_lo just below
// (rank = p descending, ties by lower id), filtered by |p(j) - p(x)| < p_thr and, with an embedding
// table, squared distance < d_thr; x always counts. p_row/q_row are float accessors; x in [0, vocab),
// h_lo / h_hi already clipped to [0, vocab - 1] (GsdConfig). Insertion into the two short sorted side
// lists keeps the cost O(V * window) per draft without sorting the row.
template <class PRow, class QRow>
GroupMass group_mass(const PRow& p_row, const QRow* q_row, int64_t vocab, int64_t x, const GsdConfig& cfg,
                     const float* emb, int64_t emb_dim, std::vector<int64_t>& above, std::vector<int64_t>& below) {
  const int64_t h_lo = cfg.h_lo, h_hi = cfg.h_hi;
  const float px = p_row(x);
  auto better = [&](int64_t a, int64_t b) { return ranks_before(p_row(a), a, p_row(b), b); };
  bool ok = valid_probability(px);
  above.clear();  // kept sorted from closest-to-x (rank(x) - 1) outwards
  below.clear();  // kept sorted from closest-to-x (rank(x) + 1) outwards
  for (int64_t j = 0; j < vocab; ++j) {
    if (j == x) continue;
    ok = ok && valid_probability(p_row(j));
    if (better(j, x)) {
      if (h_hi == 0) continue;
      if (static_cast<int64_t>(above.size()) == h_hi && !better(above.back(), j)) continue;
      auto pos = std::upper_bound(above.begin(), above.end(), j, [&](int64_t a, int64_t b) { return better(b, a); });
      above.insert(pos, j);
      if (static_cast<int64_t>(above.size()) > h_hi) above.pop_back();
    } else {
      if (h_lo == 0) continue;
      if (static_cast<int64_t>(below.size()) == h_lo && !better(j, below.back())) continue;
      auto pos = std::upper_bound(below.begin(), below.end(), j, [&](int64_t a, int64_t b) { return better(a, b); });
      below.insert(pos, j);
      if (static_cast<int64_t>(below.size()) > h_lo) below.pop_back();
    }
  }
  GroupMass mass{0.0, 0.0, ok};
  auto keep = [&](int64_t j) {
    if (j == x) return true;
    if (!gsd_close_in_probability(p_row(j), px, cfg.p_thr)) return false;
    if (emb == nullptr) return true;
    mass.embeddings_ok = mass.embeddings_ok && !has_non_finite(emb + j * emb_dim, emb_dim) &&
                         !has_non_finite(emb + x * emb_dim, emb_dim);
    return gsd_close_in_embedding(emb + j * emb_dim, emb + x * emb_dim, emb_dim, cfg.d_thr);
  };
  auto add = [&](int64_t j) {
    if (!keep(j)) return;
    mass.p += static_cast<double>(p_row(j));
    if (q_row) {
      const double qj = (*q_row)(j);
      mass.values_ok = mass.values_ok && valid_probability(qj);
      mass.q += qj;
    }
  };
  // Window order: most probable first (rank(x) - h_hi ... rank(x) + h_lo), as the reference sums.
  for (auto it = above.rbegin(); it != above.rend(); ++it) add(*it);
  add(x);
  for (int64_t j : below) add(j);
  if (q_row == nullptr) mass.q = 1.0;
  return mass;
}

}  // namespace specdec::cpu
