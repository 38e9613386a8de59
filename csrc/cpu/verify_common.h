// Row-level building blocks of the CPU verification kernels (torch-free, host only): how the CPU schedules
// the per-element math of ../verify_math.h (shared with the CUDA kernels) over a row. Semantics:
// docs/ALGORITHMS.md section 3 and specdec_kernels/reference; every sum that decides a token is
// accumulated in float64.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
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

// Inverse-CDF sample over weights weight(0..V-1) >= 0: the smallest j with cumsum_j > u * total and
// weight(j) > 0, else the largest j with weight(j) > 0; -1 if every weight is zero (the caller falls back
// or reports the row). In the same pass raw(j, values) feeds the raw probabilities behind weight(j) to
// `values` (status code 6), so checking them costs no second pass.
// Sums run in float64. A strictly sequential sum is bound by add latency, so each 64-wide block is summed
// with four interleaved accumulators and the running sum is kept at block ends; the one block that
// crosses the threshold is then re-scanned sequentially. The order differs from the reference's cumsum
// only at float64 rounding level (docs/ALGORITHMS.md 3.8: tokens can differ only within that of a boundary).
template <class Weight, class Raw>
int64_t inverse_cdf(int64_t vocab, const Weight& weight, const Raw& raw, float u, std::vector<double>& block_ends,
                    RawValues& values) {
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (vocab + kBlock - 1) / kBlock;
  block_ends.resize(blocks);
  double cumulative = 0.0;
  int64_t last_nonzero = -1;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = blk * kBlock, end = std::min(vocab, begin + kBlock), n = end - begin;
    // Load the block first: independent loads keep many cache misses in flight (a cold row streams from
    // memory several times faster than when each load waits behind the add chain).
    double w[kBlock];
    for (int64_t i = 0; i < n; ++i) w[i] = weight(begin + i);
    for (int64_t i = 0; i < n; ++i) raw(begin + i, values);
    double lane[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      for (int l = 0; l < 4; ++l) lane[l] += w[i + l];
    }
    for (; i < n; ++i) lane[0] += w[i];
    for (int64_t back = n - 1; back >= 0; --back) {
      if (w[back] > 0.0) {
        last_nonzero = begin + back;
        break;
      }
    }
    cumulative += (lane[0] + lane[1]) + (lane[2] + lane[3]);
    block_ends[blk] = cumulative;
  }
  if (last_nonzero < 0) return -1;
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

// Without value tracking (rows already checked).
template <class Weight>
int64_t inverse_cdf(int64_t vocab, const Weight& weight, float u, std::vector<double>& block_ends) {
  RawValues unused;
  return inverse_cdf(vocab, weight, [](int64_t, RawValues&) {}, u, block_ends, unused);
}

struct GroupMass {
  double p;
  double q;
  bool values_ok;  // every ranked p entry and every q entry of a group member is a usable probability
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
  auto keep = [&](int64_t j) {
    if (j == x) return true;
    if (!gsd_close_in_probability(p_row(j), px, cfg.p_thr)) return false;
    return emb == nullptr || gsd_close_in_embedding(emb + j * emb_dim, emb + x * emb_dim, emb_dim, cfg.d_thr);
  };
  GroupMass mass{0.0, 0.0, ok};
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
