// Row-level building blocks shared by the CPU verification kernels (torch-free, host only).
// Semantics: docs/ALGORITHMS.md §3 and specdec_kernels/reference; every sum that decides a token is
// accumulated sequentially in float64, in the order the reference uses.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace specdec::cpu {

// Inverse-CDF sample over weights weight(0..V-1) >= 0: the smallest j with cumsum_j > u * total,
// else the largest j with weight(j) > 0; -1 if every weight is zero (the caller falls back).
// Sums run in float64. A strictly sequential sum is bound by add latency, so each 64-wide block is summed
// with four interleaved accumulators and the running sum is kept at block ends; the one block that
// crosses the threshold is then re-scanned sequentially. The order differs from the reference's cumsum
// only at float64 rounding level (docs/ALGORITHMS.md §3.8: tokens can differ only within that of a boundary).
template <class Weight>
int64_t inverse_cdf(int64_t vocab, const Weight& weight, float u, std::vector<double>& block_ends) {
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
      if (c > threshold && w > 0.0) return j;
    }
  }
  return last_nonzero;
}

// LANTERN relaxed mass of candidate x under row r: m* = the longest prefix of x's neighbour row whose
// mass c_m stays <= budget (delta, or (lam - 1) * r(x)); returns r(x) + c_{m*} and sets merged = m*.
template <class Row>
double relaxed_mass(const Row& r, int64_t x, const int32_t* neighbor_row, int64_t k, bool use_lambda,
                    double budget_param, int64_t& merged) {
  const double rx = r(x);
  const double budget = use_lambda ? (budget_param - 1.0) * rx : budget_param;
  double c = 0.0;
  merged = 0;
  for (int64_t m = 0; m < k; ++m) {
    const double next = c + r(neighbor_row[m]);
    if (next > budget) break;  // c_m is non-decreasing: the first excess ends the prefix
    c = next;
    merged = m + 1;
  }
  return rx + c;
}

struct GroupMass {
  double p;
  double q;
};

// GSD's dynamic group around x: the h_hi tokens ranked just above x and the h_lo just below
// (rank = p descending, ties by lower id), filtered by |p(j) - p(x)| < p_thr and, with an embedding
// table, squared distance < d_thr; x always counts. p_row/q_row/emb are float accessors.
template <class PRow, class QRow>
GroupMass group_mass(const PRow& p_row, const QRow* q_row, int64_t vocab, int64_t x, int64_t h_lo, int64_t h_hi,
                     float p_thr, float d_thr, const float* emb, int64_t emb_dim,
                     std::vector<int64_t>& above, std::vector<int64_t>& below) {
  const float px = p_row(x);
  // better(a, b): a ranks before b.
  auto better = [&](int64_t a, int64_t b) {
    const float pa = p_row(a), pb = p_row(b);
    return pa > pb || (pa == pb && a < b);
  };
  above.clear();  // kept sorted from closest-to-x (rank(x) - 1) outwards
  below.clear();  // kept sorted from closest-to-x (rank(x) + 1) outwards
  for (int64_t j = 0; j < vocab; ++j) {
    if (j == x) continue;
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
    if (!(std::fabs(p_row(j) - px) < p_thr)) return false;
    if (emb == nullptr) return true;
    float dist = 0.0f;
    for (int64_t d = 0; d < emb_dim; ++d) {
      const float diff = emb[j * emb_dim + d] - emb[x * emb_dim + d];
      dist += diff * diff;
    }
    return dist < d_thr;
  };
  GroupMass mass{0.0, 0.0};
  auto add = [&](int64_t j) {
    if (!keep(j)) return;
    mass.p += static_cast<double>(p_row(j));
    mass.q += q_row ? static_cast<double>((*q_row)(j)) : 0.0;
  };
  // Window order: most probable first (rank(x) - h_hi ... rank(x) + h_lo), as the reference sums.
  for (auto it = above.rbegin(); it != above.rend(); ++it) add(*it);
  add(x);
  for (int64_t j : below) add(j);
  if (q_row == nullptr) mass.q = 1.0;
  return mass;
}

}  // namespace specdec::cpu
