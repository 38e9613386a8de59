// One Jacobi decoding step on CUDA (jacobi_step; docs/ALGORITHMS.md §3.12; reference:
// specdec_kernels/reference/jacobi_step.py), torch-free: the chain verification of the window (VerifyChain over the
// logits source, row_sources.cuh), then the Jacobi refresh of every row's new window from the same processed rows,
// then a finish pass. Three launches after the row statistics (GSD: four), no host synchronisation. Per-element
// math: ../verify_math.h (the coupled keep test is the exact test, the init token jacobi_init_token), shared with
// the CPU walk (csrc/cpu/verify_walk.h jacobi_refresh).
#pragma once

#include "row_sources.cuh"
#include "verify_chain.cuh"
#include "verify_common.cuh"

namespace specdec::gpu {

struct JacobiParams {
  int64_t batch;
  int width;  // L: window entries (the verification's drafts)
  int vocab;  // V
};

constexpr int kJacobiBlock = 512;
constexpr int kJacobiItems = 4;

// Tile loader over one float32 row (the refreshed entry's q_new, written by this block) with vector loads; with
// `old` (coupled, not kept) the weights are max(0, q_new - q_old) and an unusable q_old entry sets *bad (code 6);
// with `skip` >= 0 (coupled over a one-hot q_old) that token's weight is 0.
template <class QRow>
struct RefreshLoader {
  const float* q_new;
  QRow q_old;
  bool with_old;
  int skip;
  int vocab;
  bool* bad;
  __device__ void operator()(int j0, double (&w)[kJacobiItems]) const {
    const Pack<float, kJacobiItems> fresh = load_pack<float, kJacobiItems>(q_new, j0, vocab);
    Pack<typename QRow::Stored, kJacobiItems> prev;
    if (with_old) prev = q_old.template pack<kJacobiItems>(j0);
#pragma unroll
    for (int i = 0; i < kJacobiItems; ++i) {
      const int j = j0 + i;
      double v = j < vocab ? static_cast<double>(fresh.v[i]) : 0.0;
      if (with_old && j < vocab) {
        const double old = static_cast<double>(to_float(prev.v[i]));
        if (!valid_probability(old)) *bad = true;
        v = residual_weight(v, old);
      }
      w[i] = j == skip ? 0.0 : v;
    }
  }
};

// Grid: B * L blocks; block (b, j) owns entry j of row b's new window. Sources: p the processed target [B, L + 1, V]
// (the rows verification read), q_old the window's drafts [B, L, V] (not present: one-hot at the window's tokens).
// Pointers: window [B, L] int64; u_draft, u_keep (nullptr: independent draws), u_init (nullptr: fresh entries -1)
// [B, L] f32; num_drafts [B] int64; update [B] bool; accept_len, next_token [B] int64 (VerifyChain's outputs);
// new_window [B, L] int64; new_q [B, L, V] f32; refresh_bad [B, L] int8 (1: a value this entry read is unusable).
// A row that was not verified (next_token < 0) or has update false keeps its window and q (one-hot rows of the window
// when q_old has none). Otherwise, with a accepted of n drafts:
//   j < n - a (refreshed): q_new = the processed row src = a + 1 + j, written to new_q[b, j] (the entry's q) and then
//     sampled from by inverse CDF with u_draft[b, j]. Coupled (u_keep) where src < n (the old draft x = window[b, src]
//     was used, so checked): keep x iff u_keep * q_old(x) < q_new(x) (q_old(x) = 1 one-hot), else draw from
//     max(0, q_new - q_old[b, src]) (one-hot: q_new without x), or from q_new when that has no mass. q_old(x), and
//     the whole row q_old[b, src] when x is not kept, must be usable (code 6); so must the processed row src.
//   j >= n - a (fresh): jacobi_init_token(u_init[b, j]) with a one-hot q, or -1 with an all-zero row.
// Every branch is uniform across the block.
template <int BLOCK, class P, class Q>
__global__ void __launch_bounds__(BLOCK)
    JacobiRefreshKernel(P p, Q q_old, const int64_t* window, const float* u_draft, const float* u_keep,
                        const float* u_init, const int64_t* num_drafts, const bool* update, const int64_t* accept_len,
                        const int64_t* next_token, JacobiParams cfg, int64_t* new_window, float* new_q,
                        int8_t* refresh_bad) {
  using Sampler = InverseCdf<BLOCK, kJacobiItems>;
  __shared__ typename Sampler::TempStorage sampler_storage;
  const int tid = static_cast<int>(threadIdx.x);
  const int L = cfg.width;
  const int V = cfg.vocab;
  const int64_t b = blockIdx.x / L;
  const int j = static_cast<int>(blockIdx.x % L);
  const int64_t entry = b * L + j;
  const int64_t* window_b = window + b * L;
  float* out = new_q + entry * V;
  bool bad = false;
  int64_t token = -1;
  const bool refresh = next_token[b] >= 0 && update[b];
  // A verified row's count is in [0, L] and a in [0, n] (the chain kernel checked both).
  const int64_t n = refresh ? num_drafts[b] : 0, a = refresh ? accept_len[b] : 0;
  if (!refresh) {  // the row keeps its window and q
    token = window_b[j];
    if (q_old.present()) {
      const typename Q::Row row = q_old.row(b, j);
      for (int v = tid; v < V; v += BLOCK) out[v] = row(v);
    } else {
      const int64_t hot = valid_id(token, V) ? token : -1;
      for (int v = tid; v < V; v += BLOCK) out[v] = v == hot ? 1.0f : 0.0f;
    }
  } else if (j < n - a) {  // refreshed from the processed row a + 1 + j
    const int src = static_cast<int>(a + 1 + j);
    if (!p.usable(b, src)) {
      bad = true;
    } else {
      const typename P::Row row = p.row(b, src);
      for (int v = tid; v < V; v += BLOCK) out[v] = row(v);
      __syncthreads();  // q_new is read back by every thread below
      const float u = u_draft[entry];
      if (u_keep != nullptr && src < n) {  // coupled with the old draft at src
        const int x = static_cast<int>(window_b[src]);
        const bool has_old = q_old.present();
        const typename Q::Row old_row = has_old ? q_old.row(b, src) : typename Q::Row{};
        const double qx_old = has_old ? (q_old.usable(b, src) ? static_cast<double>(old_row(x)) : -1.0) : 1.0;
        if (!valid_probability(qx_old)) {
          bad = true;
        } else if (exact_accepts(static_cast<double>(u_keep[entry]), qx_old, static_cast<double>(out[x]))) {
          token = x;
        } else {
          bool old_bad = false;  // an unusable q_old entry (q_old(x) and the row's usability were checked above)
          const RefreshLoader<typename Q::Row> load{out, old_row, has_old, has_old ? -1 : x, V, &old_bad};
          token = Sampler::sample(load, V, u, sampler_storage);
          bad = __syncthreads_or(old_bad);
        }
      }
      if (!bad && token < 0) {  // an independent draw, or a coupled residual without mass
        bool unused = false;
        const RefreshLoader<typename Q::Row> load{out, typename Q::Row{}, false, -1, V, &unused};
        token = Sampler::sample(load, V, u, sampler_storage);
        bad = token < 0;  // no mass: a usable processed row always has some
      }
    }
  } else {  // a fresh entry
    token = u_init != nullptr ? jacobi_init_token(u_init[entry], V) : -1;
    for (int v = tid; v < V; v += BLOCK) out[v] = v == token ? 1.0f : 0.0f;
  }
  if (tid == 0) {
    new_window[entry] = token;
    refresh_bad[entry] = bad ? 1 : 0;
  }
}

// Grid: B * L blocks, after JacobiRefreshKernel. A row one of whose entries read an unusable value is reported as
// code 6 (accept_len 0, next_token -6) and keeps its window and q, as a row the verification rejected; block (b, 0)
// writes first_init[b]: n - a for a refreshed row, L for a row that kept its window.
template <int BLOCK, class Q>
__global__ void __launch_bounds__(BLOCK)
    JacobiFinishKernel(Q q_old, const int64_t* window, const int64_t* num_drafts, const bool* update,
                       const int8_t* refresh_bad, JacobiParams cfg, int64_t* accept_len, int64_t* next_token,
                       int64_t* new_window, float* new_q, int64_t* first_init) {
  const int tid = static_cast<int>(threadIdx.x);
  const int L = cfg.width;
  const int V = cfg.vocab;
  const int64_t b = blockIdx.x / L;
  const int j = static_cast<int>(blockIdx.x % L);
  const int64_t entry = b * L + j;
  bool row_bad = false;
  for (int i = 0; i < L; ++i) row_bad = row_bad || refresh_bad[b * L + i] != 0;  // uniform
  if (row_bad) {  // restore entry j
    const int64_t token = window[entry];
    float* out = new_q + entry * V;
    if (q_old.present()) {
      const typename Q::Row row = q_old.row(b, j);
      for (int v = tid; v < V; v += BLOCK) out[v] = row(v);
    } else {
      const int64_t hot = valid_id(token, V) ? token : -1;
      for (int v = tid; v < V; v += BLOCK) out[v] = v == hot ? 1.0f : 0.0f;
    }
    if (tid == 0) new_window[entry] = token;
  }
  if (j == 0 && tid == 0) {  // the only block that reads or writes row b's verification outputs here
    if (row_bad) {
      accept_len[b] = 0;
      next_token[b] = -kBadProbability;
      first_init[b] = L;
    } else if (next_token[b] < 0 || !update[b]) {
      first_init[b] = L;
    } else {
      first_init[b] = num_drafts[b] - accept_len[b];
    }
  }
}

// refresh_bad: [batch, L] int8 workspace (JacobiRefreshFlags entries).
inline size_t JacobiRefreshFlags(int64_t batch, int width) { return static_cast<size_t>(batch) * width; }

// The refresh and finish passes after VerifyChain wrote accept_len / next_token (same stream). L = 0 launches nothing
// (the caller sets first_init to 0).
template <class P, class Q>
cudaError_t JacobiRefresh(const P& p, const Q& q_old, const int64_t* window, const float* u_draft,
                          const float* u_keep, const float* u_init, const int64_t* num_drafts, const bool* update,
                          const JacobiParams& cfg, int8_t* refresh_bad, int64_t* accept_len, int64_t* next_token,
                          int64_t* new_window, float* new_q, int64_t* first_init, cudaStream_t stream) {
  const int64_t blocks = cfg.batch * cfg.width;
  if (blocks == 0) return cudaSuccess;
  JacobiRefreshKernel<kJacobiBlock, P, Q><<<static_cast<unsigned>(blocks), kJacobiBlock, 0, stream>>>(
      p, q_old, window, u_draft, u_keep, u_init, num_drafts, update, accept_len, next_token, cfg, new_window, new_q,
      refresh_bad);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  JacobiFinishKernel<kJacobiBlock, Q><<<static_cast<unsigned>(blocks), kJacobiBlock, 0, stream>>>(
      q_old, window, num_drafts, update, refresh_bad, cfg, accept_len, next_token, new_window, new_q, first_init);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
