// Fused tree verification: recursive rejection over siblings, level by level (docs/ALGORITHMS.md §3.5;
// reference: specdec_kernels/reference/verify_tree.py), torch-free kernel and launcher, written once over row
// sources (row_sources.cuh): verify_tree reads probability tensors, verify_tree_logits raw logits processed where
// they are read. The kernel follows the rule's traits (methods.h) and calls its test from ../verify_math.h.
#pragma once

#include "lantern_relaxed_mass.cuh"
#include "row_sources.cuh"
#include "verify_common.cuh"

namespace specdec::gpu {

struct TreeParams {
  int64_t batch;
  int nodes;        // M (root included)
  int vocab;        // V
  RuleParams rule;  // the rule (method code, tables, settings)
};

// The current target distribution r, one float64 row of global scratch per tree.
struct ScratchRow {
  const double* row;
  __device__ double operator()(int64_t j) const { return row[j]; }
};

constexpr int kTreeBlock = 1024;
// Computed (logits) sources: float64 work per entry read, bound by the SM's float64 units rather than by memory, so
// half the threads with room for their registers (launch bounds (512, 1): up to 128 registers, no spills).
constexpr int kTreeBlockComputed = 512;
constexpr int kTreeItems = 4;

// Grid: one block of BLOCK threads per tree b. Sources (row_sources.cuh): p the target [B, M, V], q the per-node
// drafts [B, M, V] (not present: one-hot proposals). Pointers (row-major, contiguous): tree_tokens, parents [B, M]
// int64;
//   u_accept [B, M] f32 (entry c used only by node c's test); u_sample [B] f32; num_nodes [B] int64;
//   r_scratch [B, V] float64 (uninitialised; the kernel owns row b);
//   accepted_nodes [B, max(M - 1, 0)] int64 (-1 padded by the kernel); accept_len, next_token [B] int64.
// Dynamic shared memory: ceil(V / 32) words, the bitmask of tokens tried at the current node.
// METHOD is the rule's code: a code that is no tree rule of this build (kUnknownMethod included) reports every tree
// as code 7; the neighbour table's status and the relaxed residual follow the rule's traits.
// Status pass first (methods.h codes 1-5, one thread per node, lowest code wins): a bad tree is reported
// (accepted_nodes[b, :] = -1, accept_len 0, next_token -code) without being walked. After it, every valid
// token is in [0, V) and parents[b, c] < c, so children of `cur` have ids > cur and the walk ends. Code 6:
// a row p[b, n] loaded on the accepted path or a row q[b, n] whose children are tested is not usable or holds an
// unusable entry, or p[b, n] has no mass. Every branch is uniform (decisions are taken by one thread or one warp and
// broadcast through shared memory), and r is only rewritten after a barrier that follows its last read.
// State as in the reference: r = p[b, cur] (as float64) on arrival at cur; per tried child t:
//   q' = q[b, cur] without the tokens tried before t, renormalised (zero if nothing is left);
//   exact: accept iff u * q'(t) < r(t); lantern: p~ from r, accept iff p~ > 0 and u * q'(t) <= p~;
//   rejection: r <- max(0, r~ - q') / total (q None: r~ with r~(t) = 0), or p[b, cur] if total == 0.
template <int BLOCK, int METHOD, class P, class Q>
__global__ void __launch_bounds__(BLOCK, 1)
    VerifyTreeKernel(P p, Q q, const int64_t* tree_tokens, const int64_t* parents, const float* u_accept,
                     const float* u_sample, const int64_t* num_nodes, TreeParams cfg, double* r_scratch,
                     int64_t* accepted_nodes, int64_t* accept_len, int64_t* next_token) {
  constexpr MethodTraits kTraits = method_traits(METHOD);
  constexpr bool kRelaxed = kTraits.residual == Residual::kOverRelaxed;
  using Sampler = InverseCdf<BLOCK, kTreeItems>;
  using Sum = BlockSum<BLOCK>;
  union Storage {
    typename Sampler::TempStorage sampler;
    typename Sum::TempStorage sum;
  };
  __shared__ Storage storage;
  __shared__ double s_p_tilde;
  __shared__ int s_merged;
  __shared__ int s_ok;
  __shared__ int s_codes;
  unsigned* tried_bits = dynamic_smem<unsigned>();

  const int tid = static_cast<int>(threadIdx.x);
  const int64_t b = blockIdx.x;
  const int M = cfg.nodes;
  const int V = cfg.vocab;
  const int width = M > 1 ? M - 1 : 0;
  const int64_t* par = parents + b * M;
  const int64_t* tok = tree_tokens + b * M;
  const float* u_b = u_accept + b * M;
  double* r = r_scratch + b * static_cast<int64_t>(V);
  int64_t* accepted_b = accepted_nodes + b * width;
  auto report = [&](int64_t code) {  // uniform
    for (int i = tid; i < width; i += BLOCK) accepted_b[i] = -1;
    if (tid == 0) {
      accept_len[b] = 0;
      next_token[b] = -code;
    }
  };

  if constexpr (!kTraits.tree) {  // not a tree rule of this build: no rule is guessed
    report(kBadMethod);
  } else {
    // ---- status pass (codes 1-5)
    const int64_t requested = num_nodes[b];
    const bool count_ok = requested >= 1 && requested <= M;
    const int n_b = count_ok ? static_cast<int>(requested) : 0;
    if (tid == 0) s_codes = count_ok ? 0 : (1 << kBadCount);
    __syncthreads();
    {
      int64_t code = kRowOk;
      const int32_t* neighbors = kTraits.needs_neighbors ? cfg.rule.neighbors : nullptr;
      for (int n = tid; n < n_b; n += BLOCK) {
        code = first_failure(code, token_status(tok[n], V, u_b[n], neighbors, cfg.rule.k));
        if (!valid_parent(n, par[n])) code = first_failure(code, kBadParent);
      }
      if (tid == 0 && !valid_uniform(u_sample[b])) code = first_failure(code, kBadUniform);
      if (code != kRowOk) atomicOr(&s_codes, 1 << code);
    }
    __syncthreads();
    if (s_codes != 0) {
      report(__ffs(s_codes) - 1);
      return;
    }

    // r = p[b, node] as float64; false (uniform) if the row is not usable, an entry is unusable or the row has no mass.
    auto load_row = [&](int node) {
      if (!p.usable(b, node)) return false;  // uniform
      const typename P::Row row = p.row(b, node);
      double local = 0.0;
      bool bad = false;
      for (int j = tid; j < V; j += BLOCK) {
        const double v = static_cast<double>(row(j));
        bad = bad || !valid_probability(v);
        r[j] = v;
        local += v;
      }
      const bool any_bad = __syncthreads_or(bad);
      const double mass = Sum::sum(local, storage.sum);
      return !any_bad && mass > 0.0;
    };

    const int words = (V + 31) / 32;
    for (int i = tid; i < words; i += BLOCK) tried_bits[i] = 0u;
    if (!load_row(0)) {
      report(kBadProbability);
      return;
    }

    int cur = 0, count = 0;
    while (true) {
      const bool has_q = q.present();
      const typename Q::Row q_cur = has_q ? q.row(b, cur) : typename Q::Row{};
      bool accepted = false;
      for (int c = cur + 1; c < n_b; ++c) {
        if (par[c] != cur) continue;
        const int t = static_cast<int>(tok[c]);
        if (test_bit(tried_bits, t)) continue;  // a repeated sibling token: its uniform is unused

        double q_total = 0.0, q_t = 1.0;
        if (has_q) {
          double local = 0.0;
          bool bad = !q.usable(b, cur);  // uniform
          for (int j = tid; j < V; j += BLOCK) {
            const double v = static_cast<double>(q_cur(j));
            bad = bad || !valid_probability(v);
            if (!test_bit(tried_bits, j)) local += v;
          }
          if (__syncthreads_or(bad)) {  // uniform
            report(kBadProbability);
            return;
          }
          q_total = Sum::sum(local, storage.sum);
          q_t = q_total > 0.0 ? static_cast<double>(q_cur(t)) / q_total : 0.0;
        }
        const double u = static_cast<double>(u_b[c]);
        int merged = 0;
        if constexpr (METHOD == kLantern) {  // the rule's test
          if (tid < kWarp) {
            int m = 0;
            const double p_tilde = warp_relaxed_mass(
                ScratchRow{r}, t, cfg.rule.neighbors + static_cast<int64_t>(t) * cfg.rule.k, cfg.rule.k,
                cfg.rule.lantern, &m);
            if (tid == 0) {
              s_p_tilde = p_tilde;
              s_merged = m;
              s_ok = lantern_accepts(u, q_t, p_tilde);
            }
          }
        } else {
          static_assert(METHOD == kExact, "a tree rule without an acceptance test in this kernel");
          if (tid == 0) s_ok = exact_accepts(u, q_t, r[t]);
        }
        __syncthreads();  // every read of r for this test is done; r may be rewritten below
        const bool ok = s_ok != 0;
        if constexpr (kRelaxed) merged = s_merged;

        if (ok) {
          if (tid == 0) accepted_b[count] = c;
          ++count;
          for (int c2 = cur + 1 + tid; c2 < n_b; c2 += BLOCK) {  // forget this level's tried tokens
            if (par[c2] == cur) {
              const int t2 = static_cast<int>(tok[c2]);
              atomicAnd(&tried_bits[t2 >> 5], ~(1u << (t2 & 31)));
            }
          }
          cur = c;
          __syncthreads();  // everyone is done with this level's r and tried tokens
          if (!load_row(c)) {
            report(kBadProbability);
            return;
          }
          accepted = true;
          break;
        }

        // Rejected: r~ (LANTERN moves the merged neighbours' mass onto t), then the residual.
        if constexpr (kRelaxed) {
          if (merged > 0) {
            if (tid < kWarp) {
              const int32_t* nb = cfg.rule.neighbors + static_cast<int64_t>(t) * cfg.rule.k;
              const double gained = warp_gather_sum(ScratchRow{r}, nb, merged);
              __syncwarp();
              if (tid == 0) r[t] += gained;
              for (int m = tid; m < merged; m += kWarp) r[nb[m]] = 0.0;
            }
            __syncthreads();
          }
        }
        double local = 0.0;
        if (has_q) {
          const bool any_q = q_total > 0.0;
          for (int j = tid; j < V; j += BLOCK) {
            const double qj = (any_q && !test_bit(tried_bits, j)) ? static_cast<double>(q_cur(j)) / q_total : 0.0;
            const double v = residual_weight(r[j], qj);
            r[j] = v;
            local += v;
          }
        } else {
          for (int j = tid; j < V; j += BLOCK) {
            if (j == t) r[j] = 0.0;
            local += r[j];
          }
        }
        const double total = Sum::sum(local, storage.sum);
        if (total > 0.0) {
          for (int j = tid; j < V; j += BLOCK) r[j] = r[j] / total;
        } else {
          const typename P::Row p_cur = p.row(b, cur);  // usable: checked when cur was reached
          for (int j = tid; j < V; j += BLOCK) r[j] = static_cast<double>(p_cur(j));
        }
        if (tid == 0) tried_bits[t >> 5] |= 1u << (t & 31);
        __syncthreads();
      }
      if (!accepted) break;
    }

    // r holds p[b, cur] (bonus: no children) or the residual after the last rejection (never all zero:
    // a vanished residual fell back to p[b, cur], whose mass was checked when cur was reached).
    const int token = Sampler::sample(ElementLoader<kTreeItems, ScratchRow>{ScratchRow{r}, V}, V, u_sample[b],
                                      storage.sampler);
    if (token < 0) {
      report(kBadProbability);
      return;
    }
    for (int i = count + tid; i < width; i += BLOCK) accepted_b[i] = -1;
    if (tid == 0) {
      accept_len[b] = count;
      next_token[b] = token;
    }
  }
}

// r_scratch: [batch, vocab] float64 workspace (VerifyTreeScratchDoubles).
inline size_t VerifyTreeScratchDoubles(int64_t batch, int vocab) { return static_cast<size_t>(batch) * vocab; }

template <int METHOD, class P, class Q>
cudaError_t LaunchVerifyTree(const P& p, const Q& q, const int64_t* tree_tokens, const int64_t* parents,
                             const float* u_accept, const float* u_sample, const int64_t* num_nodes,
                             const TreeParams& cfg, double* r_scratch, int64_t* accepted_nodes, int64_t* accept_len,
                             int64_t* next_token, cudaStream_t stream) {
  constexpr int kBlock = P::kComputed ? kTreeBlockComputed : kTreeBlock;
  const size_t smem = static_cast<size_t>((cfg.vocab + 31) / 32) * sizeof(unsigned);
  auto kernel = VerifyTreeKernel<kBlock, METHOD, P, Q>;
  const cudaError_t status = ensure_dynamic_smem(kernel, smem);
  if (status != cudaSuccess) return status;
  kernel<<<static_cast<unsigned>(cfg.batch), kBlock, smem, stream>>>(
      p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg, r_scratch, accepted_nodes, accept_len,
      next_token);
  return cudaGetLastError();
}

// Tree verification of every tree over sources p (target [B, M, V]) and q (per-node drafts, or no rows), with the
// rule cfg.rule.method; a code that is no tree rule reports every tree as code 7. No host synchronisation.
template <class P, class Q>
cudaError_t VerifyTree(const P& p, const Q& q, const int64_t* tree_tokens, const int64_t* parents,
                       const float* u_accept, const float* u_sample, const int64_t* num_nodes, const TreeParams& cfg,
                       double* r_scratch, int64_t* accepted_nodes, int64_t* accept_len, int64_t* next_token,
                       cudaStream_t stream) {
  if (cfg.batch == 0) return cudaSuccess;
  switch (cfg.rule.method) {
    case kExact:
      return LaunchVerifyTree<kExact>(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg, r_scratch,
                                      accepted_nodes, accept_len, next_token, stream);
    case kLantern:
      return LaunchVerifyTree<kLantern>(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg, r_scratch,
                                        accepted_nodes, accept_len, next_token, stream);
    default:
      return LaunchVerifyTree<kUnknownMethod>(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg,
                                              r_scratch, accepted_nodes, accept_len, next_token, stream);
  }
}

}  // namespace specdec::gpu
