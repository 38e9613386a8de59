// The CPU row walks, written once: chain verification, tree verification and the Jacobi refresh, each over a *row
// source*. verify_chain / verify_tree read probability tensors (TensorRows); verify_chain_logits /
// verify_tree_logits / jacobi_step read raw logits processed on demand (LogitsRows), so a logits row is processed
// only where the walk reads it. The walks branch on the rule's traits (methods.h) and call its test from
// ../verify_math.h; semantics: docs/ALGORITHMS.md §3 and specdec_kernels/reference.
//
// A row source S of a [B, S, V] family of distributions is used one row at a time:
//   bool S::load(b, i)   make row (b, i) current; false if it cannot be a distribution (logits: NaN / +inf, or
//                        every logit -inf), which the walk reports as code 6
//   float S::operator()(j)  entry j of the current row, as float32
// Entries of tensor rows are checked where they are read (code 6); processed rows are valid by construction and
// pass the same checks. A null Q* draft source means one-hot drafts (q(x) = 1).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "../verify_logits_checks.h"
#include "processed_row.h"
#include "verify_common.h"

namespace specdec::cpu {

using logits::MethodParams;

// ------------------------------------------------------------------------------------------ row sources

template <typename T>
struct TensorRows {
  const T* base;
  int64_t slots;
  int64_t vocab;
  const T* row = nullptr;

  bool load(int64_t b, int64_t i) {
    row = base + (b * slots + i) * vocab;
    return true;
  }
  float operator()(int64_t j) const { return static_cast<float>(row[j]); }
};

// Raw logits rows, processed when loaded; `uncond` is the uncond half of a doubled (CFG) batch, or nullptr.
// Each thread works on its own copy (the processed row is a per-copy buffer).
template <typename T>
struct LogitsRows {
  const T* cond;
  const T* uncond;
  int64_t slots;
  int64_t vocab;
  Processing proc;
  ProcessedRow buf;

  bool load(int64_t b, int64_t i) {
    const int64_t offset = (b * slots + i) * vocab;
    return buf.load(cond + offset, uncond ? uncond + offset : static_cast<const T*>(nullptr), vocab, proc);
  }
  float operator()(int64_t j) const { return buf.prob(j); }
};

// A null draft source of the right type (one-hot drafts).
template <class Q>
constexpr Q* kOneHot = nullptr;

// ------------------------------------------------------------------------------------------ chain

struct ChainScratch {
  std::vector<int64_t> above, below;
  std::vector<double> residual, block_ends;
};

struct ChainOutcome {
  int64_t accept_len;
  int64_t next_token;  // -code for a row that was not verified
};

inline ChainOutcome bad_row(int64_t code) { return {0, -code}; }

// Verifies row b: drafts i < n tested in order up to the first rejection, then the recovered token (from the
// rule's residual at a) or the bonus token (row n). Rows past the first rejection are never loaded. On return
// the current row of p is the one the token was sampled from (a), and of q the rejected draft's (when a < n).
template <class P, class Q>
ChainOutcome chain_walk(P& p, Q* q, int64_t b, int64_t n, int64_t drafts, int64_t vocab, const int64_t* draft_b,
                        const float* u_b, float u_sample, const MethodParams& mp, ChainScratch& s) {
  const MethodTraits traits = method_traits(mp.method);
  if (!traits.chain) return bad_row(kBadMethod);
  const int64_t status = chain_row_status(n, drafts, draft_b, u_b, u_sample, vocab, mp.status_neighbors(), mp.k);
  if (status != kRowOk) return bad_row(status);
  // ---- the accept prefix: tests in order up to the first rejection (tested values must be usable)
  int64_t a = 0, merged = 0;
  for (; a < n; ++a) {
    if (!p.load(b, a) || (q && !q->load(b, a))) return bad_row(kBadProbability);
    const int64_t x = draft_b[a];
    const double u = u_b[a];
    const double px = p(x);
    const double qx = q ? static_cast<double>((*q)(x)) : 1.0;
    if (!valid_probability(px) || !valid_probability(qx)) return bad_row(kBadProbability);
    bool pass = false;
    switch (mp.method) {  // the rule's test; everything else in the walk follows its traits
      case kExact:
        pass = exact_accepts(u, qx, px);
        break;
      case kGsd: {
        const GroupMass g = group_mass(p, q, vocab, x, mp.gsd, mp.embeddings, mp.emb_dim, s.above, s.below);
        if (!g.values_ok || !g.embeddings_ok) return bad_row(kBadProbability);  // a value it read is unusable
        pass = group_accepts(u, g.q, g.p);
        break;
      }
      case kLantern: {
        auto pd = [&](int64_t j) { return static_cast<double>(p(j)); };
        pass = lantern_accepts(u, qx, relaxed_mass(pd, x, mp.neighbors + x * mp.k, mp.k, mp.lantern, &merged));
        break;
      }
      case kTypical: {  // the entropy of the whole row p[b, a], which is thus read
        double entropy = 0.0;
        uint32_t unusable = 0;
        for (int64_t j = 0; j < vocab; ++j) {
          const float pj = p(j);
          unusable |= unusable_probability(pj);
          entropy += entropy_term(pj);
        }
        if (unusable != 0) return bad_row(kBadProbability);
        pass = typical_accepts(px, entropy, mp.typical);
        break;
      }
      default:
        return bad_row(kBadMethod);
    }
    if (!pass) break;
  }
  // ---- the sample: the rule's residual at a (a < n), or the bonus row p[b, n]; the whole rows read are checked
  if (a == n && !p.load(b, n)) return bad_row(kBadProbability);
  auto target_w = [&](int64_t j) { return static_cast<double>(p(j)); };
  bool unusable = false;
  int64_t token = -1;
  if (a < n && traits.residual != Residual::kTarget) {
    const int64_t x = draft_b[a];
    if (merged == 0) {  // weights on the fly: no row buffer
      if (q) {
        auto w = [&](int64_t j) { return residual_weight(target_w(j), static_cast<double>((*q)(j))); };
        auto bad = [&](int64_t j) { return unusable_probability(p(j)) | unusable_probability((*q)(j)); };
        token = inverse_cdf(vocab, w, bad, u_sample, s.block_ends, unusable);
      } else {  // one-hot q: the weights are p itself except at x, whose p(x) was tested already
        auto w = [&](int64_t j) { return j == x ? residual_weight(target_w(j), 1.0) : target_w(j); };
        token = inverse_cdf_raw(vocab, w, u_sample, s.block_ends, unusable);
      }
    } else {  // the relaxed residual: LANTERN moved the merged neighbours' mass onto x; materialise the one row
      s.residual.resize(vocab);
      const int32_t* moved = mp.neighbors + x * mp.k;
      double moved_onto_x = 0.0;
      for (int64_t m = 0; m < merged; ++m) moved_onto_x += target_w(moved[m]);
      uint32_t bad = 0;
      for (int64_t j = 0; j < vocab; ++j) {
        s.residual[j] = target_w(j);
        bad |= unusable_probability(p(j)) | (q ? unusable_probability((*q)(j)) : 0u);
      }
      unusable = bad != 0;
      for (int64_t m = 0; m < merged; ++m) s.residual[moved[m]] = 0.0;
      s.residual[x] += moved_onto_x;
      for (int64_t j = 0; j < vocab; ++j) {
        const double qj = q ? static_cast<double>((*q)(j)) : (j == x ? 1.0 : 0.0);
        s.residual[j] = residual_weight(s.residual[j], qj);
      }
      token = inverse_cdf(vocab, [&](int64_t j) { return s.residual[j]; }, u_sample, s.block_ends);
    }
    if (!unusable && token < 0) token = inverse_cdf(vocab, target_w, u_sample, s.block_ends);  // zero residual
  } else {  // bonus row; a rule whose residual is the target row samples p[b, a] itself
    token = inverse_cdf_raw(vocab, target_w, u_sample, s.block_ends, unusable);
  }
  if (unusable || token < 0) return bad_row(kBadProbability);  // a NaN / inf / negative entry, or no mass
  return {a, token};
}

// ------------------------------------------------------------------------------------------ Jacobi refresh

// Where a Jacobi step's new window comes from: the uniforms of row b and where to write it.
struct JacobiRow {
  const int64_t* window;  // the verified window [L]
  const float* u_draft;   // [L] a draw per refreshed entry
  const float* u_keep;    // [L] coupled refresh: the keep test per entry; nullptr: independent draws
  const float* u_init;    // [L] random init per fresh entry; nullptr: fresh entries left to the caller
  int64_t* new_window;    // [L]
  float* new_q;           // [L, V]
};

// Writes a one-hot row at token (or an all-zero row for token < 0: the caller places the one).
inline void one_hot_row(float* row, int64_t vocab, int64_t token) {
  std::fill(row, row + vocab, 0.0f);
  if (token >= 0) row[token] = 1.0f;
}

// The Jacobi refresh after chain_walk accepted a of n drafts: new entry j < n - a is drawn from the processed target
// row a + 1 + j (the Jacobi fixed-point update), which also becomes its q; entries j >= n - a are fresh inits with
// one-hot q. Coupled (MC-SJD): entry j keeps the old draft x at its position a + 1 + j with probability
// min(1, q_new(x) / q_old(x)) (u_keep), else draws from max(0, q_new - q_old) (u_draft), so its marginal is q_new.
// Returns the first fresh entry (n - a), or -1 when a row read is not a distribution (code 6).
template <class P, class Q>
int64_t jacobi_refresh(P& p, Q* q_old, int64_t b, int64_t a, int64_t n, int64_t drafts, int64_t vocab,
                       const JacobiRow& row, ChainScratch& s) {
  const int64_t refreshed = n - a;
  for (int64_t j = 0; j < refreshed; ++j) {
    const int64_t src = a + 1 + j;
    if (!p.load(b, src)) return -1;
    float* out = row.new_q + j * vocab;
    for (int64_t v = 0; v < vocab; ++v) out[v] = p(v);
    auto q_new = [&](int64_t v) { return static_cast<double>(out[v]); };
    bool unusable = false;
    int64_t token = -1;
    // Only a used (so checked) old draft is coupled; the bonus position and unused entries are drawn plainly.
    const bool coupled = row.u_keep != nullptr && src < n;
    if (coupled) {
      const int64_t x = row.window[src];
      if (q_old && !q_old->load(b, src)) return -1;
      const double qx_old = q_old ? static_cast<double>((*q_old)(x)) : 1.0;
      if (!valid_probability(qx_old)) return -1;
      if (exact_accepts(row.u_keep[j], qx_old, q_new(x))) {
        token = x;
      } else if (q_old) {
        auto w = [&](int64_t v) { return residual_weight(q_new(v), static_cast<double>((*q_old)(v))); };
        auto bad = [&](int64_t v) { return unusable_probability((*q_old)(v)); };
        token = inverse_cdf(vocab, w, bad, row.u_draft[j], s.block_ends, unusable);
      } else {
        auto w = [&](int64_t v) { return v == x ? 0.0 : q_new(v); };
        token = inverse_cdf(vocab, w, row.u_draft[j], s.block_ends);
      }
    }
    if (!unusable && token < 0) token = inverse_cdf_raw(vocab, q_new, row.u_draft[j], s.block_ends, unusable);
    if (unusable || token < 0) return -1;
    row.new_window[j] = token;
  }
  for (int64_t j = std::max<int64_t>(refreshed, 0); j < drafts; ++j) {
    // Uniform over the vocabulary, in float32 as the decoding loop draws it (shared with CUDA: verify_math.h).
    const int64_t token = row.u_init ? jacobi_init_token(row.u_init[j], vocab) : -1;
    row.new_window[j] = token;
    one_hot_row(row.new_q + j * vocab, vocab, token);
  }
  return refreshed;
}

// ------------------------------------------------------------------------------------------ tree

struct TreeScratch {
  std::vector<double> r, q_prime, block_ends;
  std::vector<int64_t> tried;
};

// Verifies tree b by recursive rejection over siblings, level by level, with the current target distribution r kept
// as one normalised float64 row (loaded from p at the node the walk stands on). accepted_b [M - 1] receives the
// accepted node ids. q: the distribution each node's children were drawn from (nullptr: deterministic candidates).
template <class P, class Q>
ChainOutcome tree_walk(P& p, Q* q, int64_t b, int64_t n_b, int64_t m, int64_t vocab, const int64_t* tok,
                       const int64_t* par, const float* u_b, float u_sample, const MethodParams& mp, TreeScratch& s,
                       int64_t* accepted_b) {
  const MethodTraits traits = method_traits(mp.method);
  if (!traits.tree) return bad_row(kBadMethod);
  const int64_t status = tree_row_status(n_b, m, tok, par, u_b, u_sample, vocab, mp.status_neighbors(), mp.k);
  if (status != kRowOk) return bad_row(status);
  s.r.resize(vocab);
  s.q_prime.resize(vocab);
  // r = p[b, node]; false if the row holds an unusable value or no mass (code 6).
  auto load_r = [&](int64_t node) {
    if (!p.load(b, node)) return false;
    RawValues values;
    for (int64_t j = 0; j < vocab; ++j) {
      s.r[j] = static_cast<double>(p(j));
      values.add(s.r[j]);
    }
    return values.ok() && values.sum > 0.0;
  };
  int64_t cur = 0, count = 0;
  if (!load_r(0)) return bad_row(kBadProbability);
  while (true) {
    bool accepted = false;
    s.tried.clear();
    for (int64_t c = cur + 1; c < n_b && !accepted; ++c) {
      if (par[c] != cur) continue;
      const int64_t t = tok[c];
      if (std::find(s.tried.begin(), s.tried.end(), t) != s.tried.end()) continue;
      double q_t = 1.0;
      if (q) {  // q' = q[cur] without earlier-tried tokens, renormalised (zero if nothing is left)
        if (!q->load(b, cur)) return bad_row(kBadProbability);
        RawValues values;
        for (int64_t j = 0; j < vocab; ++j) {
          s.q_prime[j] = static_cast<double>((*q)(j));
          values.add(s.q_prime[j]);
        }
        if (!values.ok()) return bad_row(kBadProbability);
        for (int64_t j : s.tried) s.q_prime[j] = 0.0;
        double total = 0.0;
        for (int64_t j = 0; j < vocab; ++j) total += s.q_prime[j];
        for (int64_t j = 0; j < vocab; ++j) s.q_prime[j] = total > 0.0 ? s.q_prime[j] / total : 0.0;
        q_t = s.q_prime[t];
      }
      s.tried.push_back(t);
      const double u = u_b[c];
      int64_t merged = 0;
      bool ok = false;
      switch (mp.method) {
        case kExact:
          ok = exact_accepts(u, q_t, s.r[t]);
          break;
        case kLantern: {
          auto rd = [&](int64_t j) { return s.r[j]; };
          ok = lantern_accepts(u, q_t, relaxed_mass(rd, t, mp.neighbors + t * mp.k, mp.k, mp.lantern, &merged));
          break;
        }
        default:
          return bad_row(kBadMethod);
      }
      if (ok) {
        accepted_b[count++] = c;
        cur = c;
        if (!load_r(c)) return bad_row(kBadProbability);
        accepted = true;
        break;
      }
      if (merged > 0) {  // the relaxed residual: move the merged neighbours' mass onto t
        const int32_t* row = mp.neighbors + t * mp.k;
        double gained = 0.0;
        for (int64_t i = 0; i < merged; ++i) gained += s.r[row[i]];
        s.r[t] += gained;
        for (int64_t i = 0; i < merged; ++i) s.r[row[i]] = 0.0;
      }
      if (q) {
        for (int64_t j = 0; j < vocab; ++j) s.r[j] = residual_weight(s.r[j], s.q_prime[j]);
      } else {
        s.r[t] = 0.0;
      }
      double total = 0.0;
      for (int64_t j = 0; j < vocab; ++j) total += s.r[j];
      if (total > 0.0) {
        for (int64_t j = 0; j < vocab; ++j) s.r[j] /= total;
      } else {
        load_r(cur);  // already checked when cur was reached
      }
    }
    if (accepted) continue;
    // Bonus (no children: r is still p[cur]) or recovered (r is the residual).
    const int64_t token = inverse_cdf(vocab, [&](int64_t j) { return s.r[j]; }, u_sample, s.block_ends);
    if (token < 0) return bad_row(kBadProbability);
    return {count, token};
  }
}

// ------------------------------------------------------------------------------------------ drivers

// Chain verification of every row in parallel over row sources P (target) and Q (drafts; nullopt: one-hot),
// `grain` rows per task. Each task walks with its own copies of the sources (processed-row buffers).
template <class P, class Q>
void chain_rows(const P& p_proto, const std::optional<Q>& q_proto, const at::Tensor& draft, const at::Tensor& u_accept,
                const at::Tensor& u_sample, const at::Tensor& num_drafts, const MethodParams& mp, int64_t vocab,
                int64_t grain, at::Tensor& accept_len, at::Tensor& next_token) {
  const int64_t batch = draft.size(0), drafts = draft.size(1);
  const int64_t* draft_ptr = draft.data_ptr<int64_t>();
  const float* u_accept_ptr = u_accept.data_ptr<float>();
  const float* u_sample_ptr = u_sample.data_ptr<float>();
  const int64_t* num_drafts_ptr = num_drafts.data_ptr<int64_t>();
  int64_t* accept_out = accept_len.data_ptr<int64_t>();
  int64_t* token_out = next_token.data_ptr<int64_t>();
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    P p = p_proto;
    std::optional<Q> q = q_proto;
    ChainScratch scratch;
    for (int64_t b = begin; b < end; ++b) {
      const ChainOutcome out = chain_walk(p, q ? &*q : kOneHot<Q>, b, num_drafts_ptr[b], drafts, vocab,
                                          draft_ptr + b * drafts, u_accept_ptr + b * drafts, u_sample_ptr[b], mp,
                                          scratch);
      accept_out[b] = out.accept_len;
      token_out[b] = out.next_token;
    }
  });
}

// Tree verification of every row in parallel over row sources P (target) and Q (per-node drafts; nullopt: one-hot).
template <class P, class Q>
void tree_rows(const P& p_proto, const std::optional<Q>& q_proto, const at::Tensor& tokens, const at::Tensor& parents,
               const at::Tensor& u_accept, const at::Tensor& u_sample, const at::Tensor& num_nodes,
               const MethodParams& mp, int64_t grain, at::Tensor& accepted_nodes, at::Tensor& accept_len,
               at::Tensor& next_token) {
  const int64_t batch = tokens.size(0), m = tokens.size(1), vocab = p_proto.vocab;
  const int64_t width = std::max<int64_t>(m - 1, 0);
  const int64_t* tok = tokens.data_ptr<int64_t>();
  const int64_t* par = parents.data_ptr<int64_t>();
  const float* u_accept_ptr = u_accept.data_ptr<float>();
  const float* u_sample_ptr = u_sample.data_ptr<float>();
  const int64_t* num_nodes_ptr = num_nodes.data_ptr<int64_t>();
  int64_t* accepted_ptr = accepted_nodes.data_ptr<int64_t>();
  int64_t* accept_out = accept_len.data_ptr<int64_t>();
  int64_t* token_out = next_token.data_ptr<int64_t>();
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    P p = p_proto;
    std::optional<Q> q = q_proto;
    TreeScratch scratch;
    for (int64_t b = begin; b < end; ++b) {
      int64_t* accepted_b = accepted_ptr + b * width;
      const ChainOutcome out = tree_walk(p, q ? &*q : kOneHot<Q>, b, num_nodes_ptr[b], m, vocab, tok + b * m,
                                         par + b * m, u_accept_ptr + b * m, u_sample_ptr[b], mp, scratch, accepted_b);
      if (out.next_token < 0) std::fill(accepted_b, accepted_b + width, int64_t{-1});
      accept_out[b] = out.accept_len;
      token_out[b] = out.next_token;
    }
  });
}

}  // namespace specdec::cpu
