// Per-element math of the verification kernels, shared by the CPU kernels (csrc/cpu) and the CUDA kernels
// (csrc/cuda): host C++ and CUDA device code, torch-free. Everything a test or a status check decides per
// element lives here once, so the CPU tests exercise the arithmetic the GPU runs (the kernels differ only
// in how they schedule it). Semantics: docs/ALGORITHMS.md §3; status codes: methods.h.
//
// Conventions: probabilities are read as float32 (whatever the storage type) and decisions are taken in
// float64 with exact products (a float32 x float32 product is exact in float64), as the reference does.
// Every comparison is written so that NaN fails it (`!(a <= b)`-style), never so that NaN passes.
#pragma once

#include <cmath>
#include <cstdint>

#include "methods.h"

namespace specdec {

// ---- Status checks (methods.h RowStatus), one element at a time.

// A probability is usable iff it is finite and >= 0 (NaN fails both comparisons).
SPECDEC_HD inline bool valid_probability(double v) { return v >= 0.0 && v <= 1.7976931348623157e308; }

// A uniform is usable iff it lies in [0, 1], 1.0 included (NaN fails). The uniform contract
// (docs/ALGORITHMS.md §3.1): every test is strict in u (u * q < p, log u < log rho, u_ar < ratio), so
// u = 1.0 acts as the supremum of [0, 1): it passes only a test whose ratio exceeds 1, which a uniform
// on [0, 1) passes with certainty too; an inverse-CDF draw at u = 1.0 takes the last token with non-zero
// weight (the limit u -> 1). A float64 uniform rounded to float32 can land on 1.0: it is a valid input.
SPECDEC_HD inline bool valid_uniform(double u) { return u >= 0.0 && u <= 1.0; }

// A real input (codebook entry, CSpD mean / log-sigma sum / token) is usable iff it is finite.
SPECDEC_HD inline bool valid_finite(double v) { return v >= -1.7976931348623157e308 && v <= 1.7976931348623157e308; }

// A standard deviation is usable iff it is finite and > 0.
SPECDEC_HD inline bool valid_sigma(double v) { return v > 0.0 && v <= 1.7976931348623157e308; }

// Do the `count` float32 values at `row` hold a NaN or an infinity.
SPECDEC_HD inline bool has_non_finite(const float* row, int64_t count) {
  bool bad = false;
  for (int64_t i = 0; i < count; ++i) bad = bad || !valid_finite(row[i]);
  return bad;
}

SPECDEC_HD inline bool valid_id(int64_t id, int64_t vocab) { return id >= 0 && id < vocab; }

// Status of one neighbour row (LANTERN) of token `self`: kBadNeighbor if an id lies outside [0, vocab) or
// equals `self`.
SPECDEC_HD inline int64_t neighbor_row_status(const int32_t* row, int64_t k, int64_t self, int64_t vocab) {
  for (int64_t m = 0; m < k; ++m) {
    const int64_t id = row[m];
    if (!valid_id(id, vocab) || id == self) return kBadNeighbor;
  }
  return kRowOk;
}

// Status of one used draft (chain) or valid node (tree) from its token and uniform: the first failing of
// kBadId, kBadNeighbor (only with a neighbour table), kBadUniform. `neighbors` is [vocab, k] or nullptr.
SPECDEC_HD inline int64_t token_status(int64_t token, int64_t vocab, float u, const int32_t* neighbors, int64_t k) {
  if (!valid_id(token, vocab)) return kBadId;
  if (neighbors != nullptr && neighbor_row_status(neighbors + token * k, k, token, vocab) != kRowOk)
    return kBadNeighbor;
  if (!valid_uniform(u)) return kBadUniform;
  return kRowOk;
}

// Tree structure: node 0 is the root (parent -1), every other valid node n has a parent in [0, n), which
// makes cycles impossible: every walk towards the root terminates.
SPECDEC_HD inline bool valid_parent(int64_t node, int64_t parent) {
  return node == 0 ? parent == -1 : (parent >= 0 && parent < node);
}

// ---- Row status codes (methods.h RowStatus) checked before any verification, built from the per-element checks
// above: the smallest failing code of the row wins. Every chain and tree kernel (probabilities, logits, Jacobi)
// calls these; `neighbors` is the table of a rule that needs one (methods.h traits), else nullptr.

// Chain row: n = num_drafts[b]; drafts / u_accept point at the row's L entries; neighbors [V, k] or nullptr.
SPECDEC_HD inline int64_t chain_row_status(int64_t n, int64_t max_drafts, const int64_t* drafts,
                                           const float* u_accept, float u_sample, int64_t vocab,
                                           const int32_t* neighbors, int64_t k) {
  if (n < 0 || n > max_drafts) return kBadCount;
  int64_t status = valid_uniform(u_sample) ? kRowOk : kBadUniform;
  for (int64_t i = 0; i < n; ++i) {
    status = first_failure(status, token_status(drafts[i], vocab, u_accept[i], neighbors, k));
  }
  return status;
}

// Tree row: the valid nodes are n < num_nodes[b], the root included; tokens / parents / u_accept point at the
// row's M entries.
SPECDEC_HD inline int64_t tree_row_status(int64_t num_nodes, int64_t max_nodes, const int64_t* tokens,
                                          const int64_t* parents, const float* u_accept, float u_sample,
                                          int64_t vocab, const int32_t* neighbors, int64_t k) {
  if (num_nodes < 1 || num_nodes > max_nodes) return kBadCount;
  int64_t status = valid_uniform(u_sample) ? kRowOk : kBadUniform;
  for (int64_t n = 0; n < num_nodes; ++n) {
    status = first_failure(status, token_status(tokens[n], vocab, u_accept[n], neighbors, k));
    if (!valid_parent(n, parents[n])) status = first_failure(status, kBadParent);
  }
  return status;
}

// ---- Acceptance tests (division-free; u in [0, 1], strict in u; q(x) := 1 for one-hot drafts).

// Exact speculative sampling: u < min(1, p/q)  <=>  u * q(x) < p(x); q(x) = 0 accepts iff p(x) > 0.
SPECDEC_HD inline bool exact_accepts(double u, double qx, double px) { return u * qx < px; }

// GSD: the same test on the group masses, u * Q_G < P_G.
SPECDEC_HD inline bool group_accepts(double u, double group_q, double group_p) { return u * group_q < group_p; }

// LANTERN: p~(x) > 0 and u * q(x) <= p~(x).
SPECDEC_HD inline bool lantern_accepts(double u, double qx, double p_tilde) {
  return p_tilde > 0.0 && u * qx <= p_tilde;
}

// Typical acceptance (docs/ALGORITHMS.md §3.11): p(x) > min(epsilon, alpha * exp(-H(p))), written as
// p(x) > epsilon || p(x) > alpha * exp(-H) so that a NaN threshold fails its side instead of winning min().
// u and q(x) play no part: the test is deterministic.
SPECDEC_HD inline bool typical_accepts(double px, double entropy, const TypicalConfig& cfg) {
  return px > cfg.epsilon || px > cfg.alpha * exp(-entropy);
}

// One entry's share of the row entropy H(p) = -sum_j p_j log p_j, in float64 (0 log 0 = 0). Negative or NaN
// entries add 0 here: the kernels report them as code 6 from the same pass.
SPECDEC_HD inline double entropy_term(double pj) { return pj > 0.0 ? -pj * log(pj) : 0.0; }

// ---- LANTERN relaxed mass (docs/ALGORITHMS.md §3.4).

// Budget beta: delta, or (lam - 1) * r(x). lam = inf with r(x) = 0 gives NaN, which merges nothing below.
SPECDEC_HD inline double lantern_budget(const LanternConfig& cfg, double rx) {
  return cfg.use_lambda ? (cfg.budget - 1.0) * rx : cfg.budget;
}

// The longest prefix of x's neighbour row whose mass c_m stays <= budget, accumulated in table order.
// Feed the neighbours' masses in order to add(); it returns false once the prefix has ended (the first
// excess ends it for good: later neighbours are not considered, even zero-mass ones).
struct RelaxedPrefix {
  double budget;
  double mass = 0.0;   // c_{m*}
  int64_t merged = 0;  // m*
  bool open = true;

  SPECDEC_HD explicit RelaxedPrefix(double b) : budget(b) {}
  SPECDEC_HD bool add(double r_neighbor) {
    if (!open) return false;
    const double next = mass + r_neighbor;
    if (!(next <= budget)) {  // NaN budget or NaN mass: merge nothing more
      open = false;
      return false;
    }
    mass = next;
    ++merged;
    return true;
  }
};

// Sequential relaxed mass of candidate x under row r (r(j) -> float64): returns p~ = r(x) + c_{m*}.
// neighbor_row must be in bounds (checked by the status pass).
template <class Row>
SPECDEC_HD double relaxed_mass(const Row& r, int64_t x, const int32_t* neighbor_row, int64_t k,
                               const LanternConfig& cfg, int64_t* merged) {
  const double rx = r(x);
  RelaxedPrefix prefix(lantern_budget(cfg, rx));
  for (int64_t m = 0; m < k && prefix.add(r(neighbor_row[m])); ++m) {
  }
  *merged = prefix.merged;
  return rx + prefix.mass;
}

// Code 6 of the lantern_relaxed_mass op: the entries the sequential scan reads, r(x) and the neighbours
// n_1 .. n_{min(merged + 1, k)} (the merged prefix and the entry that ended it), must be usable
// probabilities. A NaN / inf entry ends the prefix where it stands, so it is always among them.
template <class Row>
SPECDEC_HD int64_t relaxed_mass_status(const Row& r, int64_t x, const int32_t* neighbor_row, int64_t k,
                                       int64_t merged) {
  bool ok = valid_probability(r(x));
  const int64_t read = merged + 1 < k ? merged + 1 : k;
  for (int64_t m = 0; m < read; ++m) ok = ok && valid_probability(r(neighbor_row[m]));
  return ok ? kRowOk : kBadProbability;
}

// ---- Residual and inverse-CDF sampling.

// max(0, target - q) in float64 (NaN gives 0: NaN rows are reported by the status checks instead).
SPECDEC_HD inline double residual_weight(double target, double q) {
  const double d = target - q;
  return d > 0.0 ? d : 0.0;
}

// Inverse-CDF crossing: token j is returned at the first j with w_j > 0 and cumulative_j > u * total (a
// zero-weight token is never returned, even where a parallel sum is non-monotone by an ulp).
SPECDEC_HD inline bool cdf_crosses(double cumulative, double threshold, double w) {
  return w > 0.0 && cumulative > threshold;
}

// ---- Jacobi refresh (specdec_kernels/reference/jacobi_step.py).

// A fresh Jacobi entry drawn uniformly over the vocabulary: min(floor(float32(u) * V), V - 1) in float32, as the
// decoding loop draws it. Whatever u is, the token is in [0, V) and the float -> integer conversion is defined:
// uniforms outside [0, 1) (refused by the wrappers' validation) give what the reference's float32 -> int64 cast and
// clamp give on the CPU: 0 for NaN, for scaled values <= 0 and for those past the int64 range (+inf included).
SPECDEC_HD inline int64_t jacobi_init_token(float u, int64_t vocab) {
  const float scaled = u * static_cast<float>(vocab);
  if (!(scaled > 0.0f && scaled < 9.2233720368547758e18f)) return 0;  // 2^63: the int64 range
  const int64_t token = static_cast<int64_t>(scaled);
  return token < vocab - 1 ? token : vocab - 1;
}

// ---- GSD (docs/ALGORITHMS.md §3.3).

// Rank order: p descending, ties by the lower token id.
SPECDEC_HD inline bool ranks_before(float pa, int64_t a, float pb, int64_t b) {
  return pa > pb || (pa == pb && a < b);
}

// Probability filter |p(j) - p(x)| < p_thr, in float32 as the reference computes it.
SPECDEC_HD inline bool gsd_close_in_probability(float pj, float px, float p_thr) {
#if defined(__CUDA_ARCH__)
  const float diff = __fsub_rn(pj, px);
#else
  const float diff = pj - px;
#endif
  return (diff < 0.0f ? -diff : diff) < p_thr;
}

// Squared L2 distance between two embedding rows, sequential float32 without FMA contraction (the
// reference's order), then the filter distance < d_thr.
SPECDEC_HD inline bool gsd_close_in_embedding(const float* a, const float* b, int64_t dim, float d_thr) {
  float dist = 0.0f;
  for (int64_t d = 0; d < dim; ++d) {
#if defined(__CUDA_ARCH__)
    const float diff = __fsub_rn(a[d], b[d]);
    dist = __fadd_rn(dist, __fmul_rn(diff, diff));
#else
    const float diff = a[d] - b[d];
    dist += diff * diff;
#endif
  }
  return dist < d_thr;
}

// ---- CSpD (docs/ALGORITHMS.md §3.6).

// Neumaier's compensated float64 sum: the error stays near one rounding of the result however many terms
// are added (a plain sequential sum over D = 2^20 terms drifts by ~sqrt(D) roundings of the partial sums,
// enough to flip an accept decision against a pairwise sum). Terms must be finite (the status pass checks).
struct CompensatedSum {
  double sum = 0.0;
  double compensation = 0.0;

  SPECDEC_HD void add(double v) {
    const double t = sum + v;
    compensation += (sum >= 0.0 ? sum : -sum) >= (v >= 0.0 ? v : -v) ? (sum - t) + v : (v - t) + sum;
    sum = t;
  }
  SPECDEC_HD double value() const { return sum + compensation; }
};

// Do all `count` uniforms at `u` lie in [0, 1].
SPECDEC_HD inline bool all_uniform(const float* u, int64_t count) {
  bool ok = true;
  for (int64_t i = 0; i < count; ++i) ok = ok && valid_uniform(u[i]);
  return ok;
}

// Status of one CSpD token before any arithmetic: code 5 for a bad u_accept, code 6 for a NaN / inf x,
// mu_q, mu_p, s_q, s_p entry or a sigma that is not finite and > 0 (all [dim] rows of the token).
SPECDEC_HD inline int64_t cspd_row_status(float u_accept, const float* x, const float* mu_q, const float* sigma_q,
                                          const float* mu_p, const float* sigma_p, const float* s_q, const float* s_p,
                                          int64_t dim) {
  if (!valid_uniform(u_accept)) return kBadUniform;
  bool ok = true;
  for (int64_t d = 0; d < dim; ++d) {
    ok = ok && valid_finite(x[d]) && valid_finite(mu_q[d]) && valid_finite(mu_p[d]) && valid_finite(s_q[d]) &&
         valid_finite(s_p[d]) && valid_sigma(sigma_q[d]) && valid_sigma(sigma_p[d]);
  }
  return ok ? kRowOk : kBadProbability;
}

}  // namespace specdec
