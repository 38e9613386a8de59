// Fused chain verification (docs/ALGORITHMS.md §3.2-3.4; reference: specdec_kernels/reference/verify_chain.py),
// torch-free: one launch per call, no [B, L, V] temporaries.
#pragma once

#include "gsd_group_mass.cuh"
#include "lantern_relaxed_mass.cuh"
#include "verify_common.cuh"

namespace specdec::gpu {

struct ChainParams {
  int64_t batch;
  int max_drafts;             // L
  int vocab;                  // V
  const int32_t* neighbors;   // lantern: [V, k] int32
  int k;
  bool use_lambda;            // lantern: budget is lam (true) or delta (false)
  double budget;
  GsdParams gsd;              // gsd
};

// Phase-2 weights of one row, computed on the fly: the target row p[b, a] itself (bonus, or the
// zero-residual fallback), or the residual max(0, p~_x - q) at the first rejection, where p~_x is the
// target with LANTERN's merged neighbours' mass moved onto x (bitmask `moved`, sum `gained`) and q is
// one-hot at x when q_row is nullptr. All float64, never normalised.
template <class T>
struct ChainWeight {
  const T* target;
  const T* q_row;
  const unsigned* moved;
  double gained;
  int x;
  bool residual;
  bool relax;
  __device__ double operator()(int j) const {
    const double t = prob64(target, j);
    if (!residual) return t;
    double relaxed = t;
    if (relax) {
      if (test_bit(moved, j)) {
        relaxed = 0.0;
      } else if (j == x) {
        relaxed = t + gained;
      }
    }
    const double qj = q_row != nullptr ? prob64(q_row, j) : (j == x ? 1.0 : 0.0);
    const double d = relaxed - qj;
    return d > 0.0 ? d : 0.0;
  }
};

constexpr int kChainBlock = 1024;
constexpr int kChainItems = 4;

// Grid: one block of BLOCK threads per batch row b. Pointers (row-major, contiguous):
//   p [B, L+1, V] T; q [B, L, V] T or nullptr (one-hot drafts); draft [B, L] int64; u_accept [B, L] f32;
//   u_sample [B] f32; num_drafts [B] int64 (clamped to [0, L] so a malformed direct call stays in
//   bounds); accept_len, next_token [B] int64 (written by thread 0).
// Dynamic shared memory: METHOD == lantern only, ceil(V / 32) words (bitmask of the merged neighbours).
// Phase 1 finds a = the first failing draft (n if none). Every test is independent of the others, so:
//   exact:   one thread per draft, u * q(x) < p(x) as an exact float64 product;
//   lantern: one warp per draft (warp_relaxed_mass), p~ > 0 and u * q(x) <= p~;
//   gsd:     drafts in order, each a block-wide group mass, stopping at the first rejection;
// a = the smallest failing index (shared atomicMin), which equals the reference's cumulative AND.
// Phase 2 samples from row a only (residual if a < n, bonus row if a == n) with InverseCdf: one float64
// pass for the total, one up to the crossing tile (plus one more total only for a residual that sums to
// zero, which falls back to p[b, a]).
template <int BLOCK, class T, int METHOD>
__global__ void __launch_bounds__(BLOCK)
    VerifyChainKernel(const T* p, const T* q, const int64_t* draft, const float* u_accept, const float* u_sample,
                      const int64_t* num_drafts, ChainParams cfg, int64_t* accept_len, int64_t* next_token) {
  using Sampler = InverseCdf<BLOCK, kChainItems>;
  union Storage {
    typename Sampler::TempStorage sampler;
    typename GroupMassBlock<BLOCK>::TempStorage gsd;
  };
  __shared__ Storage storage;
  __shared__ int s_first_fail;
  __shared__ int s_merged;
  __shared__ double s_gained;
  unsigned* moved_bits = dynamic_smem<unsigned>();

  const int tid = static_cast<int>(threadIdx.x);
  const int64_t b = blockIdx.x;
  const int L = cfg.max_drafts;
  const int V = cfg.vocab;
  const int64_t requested = num_drafts[b];
  const int n = requested < 0 ? 0 : (requested > L ? L : static_cast<int>(requested));
  const T* p_b = p + b * (L + 1) * static_cast<int64_t>(V);
  const T* q_b = q != nullptr ? q + b * L * static_cast<int64_t>(V) : nullptr;
  const int64_t* x_b = draft + b * L;
  const float* u_b = u_accept + b * L;
  auto p_row = [&](int i) { return p_b + static_cast<int64_t>(i) * V; };
  auto q_row = [&](int i) { return q_b != nullptr ? q_b + static_cast<int64_t>(i) * V : nullptr; };

  if (tid == 0) {
    s_first_fail = n;
    s_merged = 0;
  }
  __syncthreads();

  // ---- phase 1: the accept prefix
  if constexpr (METHOD == kMethodExact) {
    for (int i = tid; i < n; i += BLOCK) {
      const int x = static_cast<int>(x_b[i]);
      const double px = prob64(p_row(i), x);
      const double qx = q_b != nullptr ? prob64(q_row(i), x) : 1.0;
      if (!(static_cast<double>(u_b[i]) * qx < px)) {
        atomicMin(&s_first_fail, i);
        break;  // this thread's later drafts cannot be the first failure
      }
    }
  } else if constexpr (METHOD == kMethodLantern) {
    const int warp = tid / kWarp;
    const int lane = tid & (kWarp - 1);
    int my_fail = -1, my_merged = 0;
    for (int i = warp; i < n; i += BLOCK / kWarp) {
      const int x = static_cast<int>(x_b[i]);
      int merged = 0;
      const double p_tilde = warp_relaxed_mass(ProbRow<T>{p_row(i)}, x, cfg.neighbors + static_cast<int64_t>(x) * cfg.k,
                                               cfg.k, cfg.use_lambda, cfg.budget, &merged);
      const double qx = q_b != nullptr ? prob64(q_row(i), x) : 1.0;
      if (!(p_tilde > 0.0 && static_cast<double>(u_b[i]) * qx <= p_tilde)) {
        my_fail = i;
        my_merged = merged;
        if (lane == 0) atomicMin(&s_first_fail, i);
        break;
      }
    }
    __syncthreads();
    if (my_fail >= 0 && my_fail == s_first_fail && lane == 0) s_merged = my_merged;
  } else {
    static_assert(METHOD == kMethodGsd, "unknown chain method");
    for (int i = 0; i < n; ++i) {  // uniform loop: the group mass is broadcast to every thread
      const GroupMass g =
          GroupMassBlock<BLOCK>::run(p_row(i), q_row(i), V, static_cast<int>(x_b[i]), cfg.gsd, storage.gsd);
      if (!(static_cast<double>(u_b[i]) * g.q < g.p)) {
        if (tid == 0) s_first_fail = i;
        break;
      }
    }
  }
  __syncthreads();
  const int a = s_first_fail;
  const bool rejected = a < n;

  // ---- phase 2: residual (or bonus) sample from row a
  ChainWeight<T> w{p_row(a), nullptr, moved_bits, 0.0, 0, false, false};
  if (rejected) {
    w.residual = true;
    w.x = static_cast<int>(x_b[a]);
    w.q_row = q_row(a);
    if constexpr (METHOD == kMethodLantern) {
      const int merged = s_merged;
      if (merged > 0) {  // uniform
        const int words = (V + 31) / 32;
        for (int i = tid; i < words; i += BLOCK) moved_bits[i] = 0u;
        __syncthreads();
        const int32_t* nb = cfg.neighbors + static_cast<int64_t>(w.x) * cfg.k;
        for (int m = tid; m < merged; m += BLOCK) atomicOr(&moved_bits[nb[m] >> 5], 1u << (nb[m] & 31));
        if (tid < kWarp) {
          const double gained = warp_gather_sum(ProbRow<T>{w.target}, nb, merged);
          if (tid == 0) s_gained = gained;
        }
        __syncthreads();
        w.relax = true;
        w.gained = s_gained;
      }
    }
  }
  int last_nonzero = -1;
  double total = Sampler::total(w, V, &last_nonzero, storage.sampler);
  if (rejected && !(total > 0.0)) {  // the residual vanished (p == q, or rounding): sample p[b, a]
    w.residual = false;
    total = Sampler::total(w, V, &last_nonzero, storage.sampler);
  }
  const int token =
      Sampler::search(w, V, static_cast<double>(u_sample[b]) * total, last_nonzero, storage.sampler);
  if (tid == 0) {
    accept_len[b] = a;
    next_token[b] = token;
  }
}

template <class T>
cudaError_t VerifyChain(const T* p, const T* q, const int64_t* draft, const float* u_accept, const float* u_sample,
                        const int64_t* num_drafts, int method, const ChainParams& cfg, int64_t* accept_len,
                        int64_t* next_token, cudaStream_t stream) {
  if (cfg.batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(cfg.batch));
  switch (method) {
    case kMethodExact:
      VerifyChainKernel<kChainBlock, T, kMethodExact>
          <<<grid, kChainBlock, 0, stream>>>(p, q, draft, u_accept, u_sample, num_drafts, cfg, accept_len, next_token);
      break;
    case kMethodGsd:
      VerifyChainKernel<kChainBlock, T, kMethodGsd>
          <<<grid, kChainBlock, 0, stream>>>(p, q, draft, u_accept, u_sample, num_drafts, cfg, accept_len, next_token);
      break;
    case kMethodLantern: {
      const size_t smem = static_cast<size_t>((cfg.vocab + 31) / 32) * sizeof(unsigned);
      auto kernel = VerifyChainKernel<kChainBlock, T, kMethodLantern>;
      const cudaError_t status = ensure_dynamic_smem(kernel, smem);
      if (status != cudaSuccess) return status;
      kernel<<<grid, kChainBlock, smem, stream>>>(p, q, draft, u_accept, u_sample, num_drafts, cfg, accept_len,
                                                  next_token);
      break;
    }
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace specdec::gpu
