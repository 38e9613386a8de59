// Fused tree verification: recursive rejection over siblings, level by level (docs/ALGORITHMS.md §3.5;
// reference: specdec_kernels/reference/verify_tree.py), torch-free kernel and launcher.
#pragma once

#include "lantern_relaxed_mass.cuh"
#include "verify_common.cuh"

namespace specdec::gpu {

struct TreeParams {
  int64_t batch;
  int nodes;                 // M (root included)
  int vocab;                 // V
  const int32_t* neighbors;  // lantern: [V, k] int32
  int k;
  bool use_lambda;
  double budget;
};

// The current target distribution r, one float64 row of global scratch per tree.
struct ScratchRow {
  const double* row;
  __device__ double operator()(int64_t j) const { return row[j]; }
};

constexpr int kTreeBlock = 1024;
constexpr int kTreeItems = 4;

// Grid: one block of BLOCK threads per tree b. Pointers (row-major, contiguous):
//   p, q [B, M, V] T (q may be nullptr: one-hot proposals); tree_tokens, parents [B, M] int64;
//   u_accept [B, M] f32 (entry c used only by node c's test); u_sample [B] f32; num_nodes [B] int64
//   (clamped to [1, M] so a malformed direct call stays in bounds);
//   r_scratch [B, V] float64 (uninitialised; the kernel owns row b);
//   accepted_nodes [B, max(M - 1, 0)] int64 (-1 padded by the kernel); accept_len, next_token [B] int64.
// Dynamic shared memory: ceil(V / 32) words, the bitmask of tokens tried at the current node.
// Invariants: parents[b, c] < c for valid c (validated in Python), so children of `cur` have ids > cur;
// every branch is uniform (decisions are taken by one thread or one warp and broadcast through shared
// memory), and r is only rewritten after a barrier that follows its last read.
// State as in the reference: r = p[b, cur] (as float64) on arrival at cur; per tried child t:
//   q' = q[b, cur] without the tokens tried before t, renormalised (zero if nothing is left);
//   exact: accept iff u * q'(t) < r(t); lantern: p~ from r, accept iff p~ > 0 and u * q'(t) <= p~;
//   rejection: r <- max(0, r~ - q') / total (q None: r~ with r~(t) = 0), or p[b, cur] if total == 0.
template <int BLOCK, class T, bool LANTERN>
__global__ void __launch_bounds__(BLOCK)
    VerifyTreeKernel(const T* p, const T* q, const int64_t* tree_tokens, const int64_t* parents, const float* u_accept,
                     const float* u_sample, const int64_t* num_nodes, TreeParams cfg, double* r_scratch,
                     int64_t* accepted_nodes, int64_t* accept_len, int64_t* next_token) {
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
  unsigned* tried_bits = dynamic_smem<unsigned>();

  const int tid = static_cast<int>(threadIdx.x);
  const int64_t b = blockIdx.x;
  const int M = cfg.nodes;
  const int V = cfg.vocab;
  const int width = M > 1 ? M - 1 : 0;
  const int64_t requested = num_nodes[b];
  const int n_b = requested < 1 ? 1 : (requested > M ? M : static_cast<int>(requested));
  const int64_t* par = parents + b * M;
  const int64_t* tok = tree_tokens + b * M;
  const float* u_b = u_accept + b * M;
  const T* p_b = p + b * M * static_cast<int64_t>(V);
  const T* q_b = q != nullptr ? q + b * M * static_cast<int64_t>(V) : nullptr;
  double* r = r_scratch + b * static_cast<int64_t>(V);

  const int words = (V + 31) / 32;
  for (int i = tid; i < words; i += BLOCK) tried_bits[i] = 0u;
  for (int j = tid; j < V; j += BLOCK) r[j] = prob64(p_b, j);
  __syncthreads();

  int cur = 0, count = 0;
  bool has_kids = false;
  while (true) {
    const T* p_cur = p_b + static_cast<int64_t>(cur) * V;
    const T* q_cur = q_b != nullptr ? q_b + static_cast<int64_t>(cur) * V : nullptr;
    has_kids = false;
    bool accepted = false;
    for (int c = cur + 1; c < n_b; ++c) {
      if (par[c] != cur) continue;
      has_kids = true;
      const int t = static_cast<int>(tok[c]);
      if (test_bit(tried_bits, t)) continue;  // a repeated sibling token: its uniform is unused

      double q_total = 0.0, q_t = 1.0;
      if (q_cur != nullptr) {
        double local = 0.0;
        for (int j = tid; j < V; j += BLOCK)
          if (!test_bit(tried_bits, j)) local += prob64(q_cur, j);
        q_total = Sum::sum(local, storage.sum);
        q_t = q_total > 0.0 ? prob64(q_cur, t) / q_total : 0.0;
      }
      const double u = static_cast<double>(u_b[c]);
      int merged = 0;
      if constexpr (LANTERN) {
        if (tid < kWarp) {
          int m = 0;
          const double p_tilde = warp_relaxed_mass(ScratchRow{r}, t, cfg.neighbors + static_cast<int64_t>(t) * cfg.k,
                                                   cfg.k, cfg.use_lambda, cfg.budget, &m);
          if (tid == 0) {
            s_p_tilde = p_tilde;
            s_merged = m;
            s_ok = p_tilde > 0.0 && u * q_t <= p_tilde;
          }
        }
      } else {
        if (tid == 0) s_ok = u * q_t < r[t];
      }
      __syncthreads();  // every read of r for this test is done; r may be rewritten below
      const bool ok = s_ok != 0;
      if constexpr (LANTERN) merged = s_merged;

      if (ok) {
        if (tid == 0) accepted_nodes[b * width + count] = c;
        ++count;
        for (int c2 = cur + 1 + tid; c2 < n_b; c2 += BLOCK) {  // forget this level's tried tokens
          if (par[c2] == cur) {
            const int t2 = static_cast<int>(tok[c2]);
            atomicAnd(&tried_bits[t2 >> 5], ~(1u << (t2 & 31)));
          }
        }
        cur = c;
        const T* p_next = p_b + static_cast<int64_t>(c) * V;
        for (int j = tid; j < V; j += BLOCK) r[j] = prob64(p_next, j);
        __syncthreads();
        accepted = true;
        break;
      }

      // Rejected: r~ (LANTERN moves the merged neighbours' mass onto t), then the residual.
      if constexpr (LANTERN) {
        if (merged > 0) {
          if (tid < kWarp) {
            const int32_t* nb = cfg.neighbors + static_cast<int64_t>(t) * cfg.k;
            const double gained = warp_gather_sum(ScratchRow{r}, nb, merged);
            __syncwarp();
            if (tid == 0) r[t] += gained;
            for (int m = tid; m < merged; m += kWarp) r[nb[m]] = 0.0;
          }
          __syncthreads();
        }
      }
      double local = 0.0;
      if (q_cur != nullptr) {
        const bool any_q = q_total > 0.0;
        for (int j = tid; j < V; j += BLOCK) {
          const double qj = (any_q && !test_bit(tried_bits, j)) ? prob64(q_cur, j) / q_total : 0.0;
          const double d = r[j] - qj;
          const double v = d > 0.0 ? d : 0.0;
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
        for (int j = tid; j < V; j += BLOCK) r[j] = prob64(p_cur, j);
      }
      if (tid == 0) tried_bits[t >> 5] |= 1u << (t & 31);
      __syncthreads();
    }
    if (!accepted) break;
  }

  int token;
  if (!has_kids) {  // bonus from p[b, cur]
    token = Sampler::sample(ProbRow<T>{p_b + static_cast<int64_t>(cur) * V}, V, u_sample[b], storage.sampler);
  } else {  // recovered from the residual after the last rejection
    token = Sampler::sample(ScratchRow{r}, V, u_sample[b], storage.sampler);
  }
  for (int i = count + tid; i < width; i += BLOCK) accepted_nodes[b * width + i] = -1;
  if (tid == 0) {
    accept_len[b] = count;
    next_token[b] = token;
  }
}

// r_scratch: [batch, vocab] float64 workspace (VerifyTreeScratchDoubles).
inline size_t VerifyTreeScratchDoubles(int64_t batch, int vocab) { return static_cast<size_t>(batch) * vocab; }

template <class T>
cudaError_t VerifyTree(const T* p, const T* q, const int64_t* tree_tokens, const int64_t* parents,
                       const float* u_accept, const float* u_sample, const int64_t* num_nodes, bool lantern,
                       const TreeParams& cfg, double* r_scratch, int64_t* accepted_nodes, int64_t* accept_len,
                       int64_t* next_token, cudaStream_t stream) {
  if (cfg.batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(cfg.batch));
  const size_t smem = static_cast<size_t>((cfg.vocab + 31) / 32) * sizeof(unsigned);
  auto kernel = lantern ? VerifyTreeKernel<kTreeBlock, T, true> : VerifyTreeKernel<kTreeBlock, T, false>;
  const cudaError_t status = ensure_dynamic_smem(kernel, smem);
  if (status != cudaSuccess) return status;
  kernel<<<grid, kTreeBlock, smem, stream>>>(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg, r_scratch,
                                             accepted_nodes, accept_len, next_token);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
