// Fused chain verification (docs/ALGORITHMS.md §3.2-3.4; reference: specdec_kernels/reference/verify_chain.py),
// torch-free: one launch per call (GSD: two), no [B, L, V] temporaries. Per-element math and the row
// status codes come from ../verify_math.h and ../methods.h, shared with the CPU kernel.
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
  LanternConfig lantern;      // lantern
  GsdParams gsd;              // gsd
  double params[kMaxParams];  // the packed method parameters (methods.h), decoded where a method uses them
};

constexpr int kChainBlock = 1024;
constexpr int kChainItems = 4;  // entries per thread and tile: one 16-byte (float) / 8-byte (half) load
constexpr int kGsdTestBlock = 512;

// Per-draft outcome of the GSD pre-pass.
enum GsdDraftFlag : int8_t { kGsdFail = 0, kGsdPass = 1, kGsdBadValues = 2 };

// GSD pre-pass: every draft's group test at once, one block per (row, draft), so the drafts of a chain
// are verified in parallel; the chain kernel then only scans the flags for the first rejection.
// Grid: B * L blocks. flags [B, L] int8 (GsdDraftFlag); a draft past num_drafts[b], a row whose
// num_drafts is out of range or a draft id outside [0, V) gets kGsdFail without any read (the chain
// kernel reports those rows by their status code before looking at the flags).
template <int BLOCK, class T>
__global__ void __launch_bounds__(BLOCK)
    GsdChainTestKernel(const T* p, const T* q, const int64_t* draft, const float* u_accept, const int64_t* num_drafts,
                       ChainParams cfg, int8_t* flags) {
  __shared__ typename GroupMassBlock<BLOCK>::TempStorage storage;
  const int L = cfg.max_drafts;
  const int V = cfg.vocab;
  const int64_t b = blockIdx.x / L;
  const int i = static_cast<int>(blockIdx.x % L);
  const int64_t requested = num_drafts[b];
  const int64_t x = draft[b * L + i];
  int8_t flag = kGsdFail;
  if (requested >= 0 && requested <= L && i < requested && valid_id(x, V)) {  // uniform across the block
    const T* p_row = p + (b * (L + 1) + i) * static_cast<int64_t>(V);
    const T* q_row = q != nullptr ? q + (b * L + i) * static_cast<int64_t>(V) : nullptr;
    const GroupMass g = GroupMassBlock<BLOCK>::run(p_row, q_row, V, static_cast<int>(x), cfg.gsd, storage);
    if (!g.values_ok) {
      flag = kGsdBadValues;
    } else if (group_accepts(static_cast<double>(u_accept[b * L + i]), g.q, g.p)) {
      flag = kGsdPass;
    }
  }
  if (threadIdx.x == 0) flags[b * L + i] = flag;
}

// Phase-2 tile loader: the weights of the row the token is sampled from, read once from global memory with
// vector loads (FROM_CACHE false; with CACHE the raw entries are kept in shared memory) and re-read from
// shared memory by the later passes (FROM_CACHE true), so the residual pass never reads the row twice
// from global memory when it fits. Weights: the target row p[b, a] itself (bonus, or the zero-residual
// fallback), or the residual max(0, p~_x - q) at the first rejection, where p~_x is the target with
// LANTERN's merged neighbours' mass moved onto x (bitmask `moved`, sum `gained`) and q is one-hot at x
// when q_row is nullptr. Sets *bad on an unusable raw entry (status code 6) when reading global memory.
template <class T, bool CACHE>
struct ChainRowLoader {
  const T* target;
  const T* q_row;  // only read when residual
  T* p_cache;      // CACHE: round_up(V, kChainItems) entries each
  T* q_cache;
  const unsigned* moved;
  double gained;
  int x;
  int vocab;
  bool residual;
  bool relax;
  bool from_cache;
  bool* bad;

  __device__ void operator()(int j0, double (&w)[kChainItems]) const {
    using P = Pack<T, kChainItems>;
#pragma unroll
    for (int i = 0; i < kChainItems; ++i) w[i] = 0.0;
    if (j0 >= vocab) return;
    const bool with_q = residual && q_row != nullptr;
    P pt, pq;
    if (CACHE && from_cache) {
      pt = *reinterpret_cast<const P*>(p_cache + j0);
      if (with_q) pq = *reinterpret_cast<const P*>(q_cache + j0);
    } else {
      pt = load_pack<T, kChainItems>(target, j0, vocab);
      if (with_q) pq = load_pack<T, kChainItems>(q_row, j0, vocab);
      if constexpr (CACHE) {
        *reinterpret_cast<P*>(p_cache + j0) = pt;
        if (with_q) *reinterpret_cast<P*>(q_cache + j0) = pq;
      }
    }
#pragma unroll
    for (int i = 0; i < kChainItems; ++i) {
      const int j = j0 + i;
      if (j >= vocab) break;
      const double t = static_cast<double>(to_float(pt.v[i]));
      const double qj = with_q ? static_cast<double>(to_float(pq.v[i])) : (j == x ? 1.0 : 0.0);
      if (!(CACHE && from_cache) && (!valid_probability(t) || (with_q && !valid_probability(qj)))) *bad = true;
      if (!residual) {
        w[i] = t;
        continue;
      }
      double relaxed = t;
      if (relax) {
        if (test_bit(moved, j)) {
          relaxed = 0.0;
        } else if (j == x) {
          relaxed = t + gained;
        }
      }
      w[i] = residual_weight(relaxed, qj);
    }
  }
};

// Dynamic shared memory of the chain kernel: [p cache][q cache] (CACHE only) then the LANTERN bitmask.
__host__ __device__ inline size_t ChainCacheEntries(int vocab) {
  return (static_cast<size_t>(vocab) + kChainItems - 1) / kChainItems * kChainItems;
}
__host__ __device__ inline size_t AlignUp16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// Grid: one block of BLOCK threads per batch row b. Pointers (row-major, contiguous):
//   p [B, L+1, V] T; q [B, L, V] T or nullptr (one-hot drafts); draft [B, L] int64; u_accept [B, L] f32;
//   u_sample [B] f32; num_drafts [B] int64; gsd_flags [B, L] int8 (METHOD gsd: GsdChainTestKernel's output);
//   accept_len, next_token [B] int64 (written by thread 0; a bad row gets 0 and -code, methods.h).
// Status pass: codes 1, 2, 4, 5 (one thread per draft, combined through a shared bitmask: lowest code
// wins), before anything else is read. Phase 1 finds a = the first failing draft (n if none). Every test
// is independent of the others, so:
//   exact:   one thread per draft, u * q(x) < p(x) as an exact float64 product;
//   lantern: one warp per draft (warp_relaxed_mass), p~ > 0 and u * q(x) <= p~;
//   gsd:     one thread per draft reads its pre-pass flag;
//   typical: one warp per draft: the row entropy (warp sum, the whole row checked for code 6), then the test;
// a = the smallest failing index (shared atomicMin), which equals the reference's cumulative AND. A draft
// whose tested p(x) / q(x) is unusable counts as failing and marks the row code 6 if it is the first.
// Phase 2 samples from row a only (residual if a < n, bonus row if a == n) with InverseCdf: one float64
// pass reading the row (vector loads, entries checked for code 6 and cached in shared memory with CACHE),
// one up to the crossing tile (from the cache), plus one more total only for a residual that sums to zero,
// which falls back to p[b, a]. A sampled row without mass is code 6.
template <int BLOCK, class T, int METHOD, bool CACHE>
__global__ void __launch_bounds__(BLOCK)
    VerifyChainKernel(const T* p, const T* q, const int64_t* draft, const float* u_accept, const float* u_sample,
                      const int64_t* num_drafts, const int8_t* gsd_flags, ChainParams cfg, int64_t* accept_len,
                      int64_t* next_token) {
  using Sampler = InverseCdf<BLOCK, kChainItems>;
  __shared__ typename Sampler::TempStorage sampler_storage;
  __shared__ int s_codes;
  __shared__ int s_first_fail;
  __shared__ int s_first_bad;
  __shared__ int s_merged;
  __shared__ double s_gained;

  const int tid = static_cast<int>(threadIdx.x);
  const int64_t b = blockIdx.x;
  const int L = cfg.max_drafts;
  const int V = cfg.vocab;
  const T* p_b = p + b * (L + 1) * static_cast<int64_t>(V);
  const T* q_b = q != nullptr ? q + b * L * static_cast<int64_t>(V) : nullptr;
  const int64_t* x_b = draft + b * L;
  const float* u_b = u_accept + b * L;
  auto p_row = [&](int i) { return p_b + static_cast<int64_t>(i) * V; };
  auto q_row = [&](int i) { return q_b != nullptr ? q_b + static_cast<int64_t>(i) * V : nullptr; };
  auto report = [&](int64_t code) {  // uniform
    if (tid == 0) {
      accept_len[b] = 0;
      next_token[b] = -code;
    }
  };

  // ---- status pass (codes 1, 2, 4, 5)
  const int64_t requested = num_drafts[b];
  const bool count_ok = requested >= 0 && requested <= L;
  const int n = count_ok ? static_cast<int>(requested) : 0;
  if (tid == 0) {
    s_codes = count_ok ? 0 : (1 << kBadCount);
    s_first_fail = n;
    s_first_bad = INT_MAX;
    s_merged = 0;
  }
  __syncthreads();
  {
    int64_t code = kRowOk;
    const int32_t* neighbors = METHOD == kLantern ? cfg.neighbors : nullptr;
    for (int i = tid; i < n; i += BLOCK) code = first_failure(code, token_status(x_b[i], V, u_b[i], neighbors, cfg.k));
    if (tid == 0 && !valid_uniform(u_sample[b])) code = first_failure(code, kBadUniform);
    if (code != kRowOk) atomicOr(&s_codes, 1 << code);
  }
  __syncthreads();
  if (s_codes != 0) {  // uniform
    report(__ffs(s_codes) - 1);
    return;
  }

  // ---- phase 1: the accept prefix
  if constexpr (METHOD == kExact) {
    for (int i = tid; i < n; i += BLOCK) {
      const int64_t x = x_b[i];
      const double px = prob64(p_row(i), x);
      const double qx = q_b != nullptr ? prob64(q_row(i), x) : 1.0;
      const bool bad = !valid_probability(px) || !valid_probability(qx);
      if (bad || !exact_accepts(static_cast<double>(u_b[i]), qx, px)) {
        atomicMin(&s_first_fail, i);
        if (bad) atomicMin(&s_first_bad, i);
        break;  // this thread's later drafts cannot be the first failure
      }
    }
  } else if constexpr (METHOD == kLantern) {
    const int warp = tid / kWarp;
    const int lane = tid & (kWarp - 1);
    int my_fail = -1, my_merged = 0;
    for (int i = warp; i < n; i += BLOCK / kWarp) {
      const int x = static_cast<int>(x_b[i]);
      int merged = 0;
      const double p_tilde = warp_relaxed_mass(ProbRow<T>{p_row(i)}, x, cfg.neighbors + static_cast<int64_t>(x) * cfg.k,
                                               cfg.k, cfg.lantern, &merged);
      const double px = prob64(p_row(i), x);
      const double qx = q_b != nullptr ? prob64(q_row(i), x) : 1.0;
      const bool bad = !valid_probability(px) || !valid_probability(qx);
      if (bad || !lantern_accepts(static_cast<double>(u_b[i]), qx, p_tilde)) {
        my_fail = i;
        my_merged = merged;
        if (lane == 0) {
          atomicMin(&s_first_fail, i);
          if (bad) atomicMin(&s_first_bad, i);
        }
        break;
      }
    }
    __syncthreads();
    if (my_fail >= 0 && my_fail == s_first_fail && lane == 0) s_merged = my_merged;
  } else if constexpr (METHOD == kTypical) {
    const TypicalConfig typical = TypicalConfig::decode(cfg.params);
    const int warp = tid / kWarp;
    const int lane = tid & (kWarp - 1);
    for (int i = warp; i < n; i += BLOCK / kWarp) {
      const T* row = p_row(i);
      double entropy = 0.0;
      bool row_bad = false;
      for (int j = lane; j < V; j += kWarp) {
        const double pj = prob64(row, j);
        row_bad |= !valid_probability(pj);
        entropy += entropy_term(pj);
      }
      for (int offset = kWarp / 2; offset > 0; offset /= 2) entropy += __shfl_xor_sync(kFullMask, entropy, offset);
      row_bad = __any_sync(kFullMask, row_bad);
      const int64_t x = x_b[i];
      const double px = prob64(row, x);
      const double qx = q_b != nullptr ? prob64(q_row(i), x) : 1.0;
      const bool bad = row_bad || !valid_probability(px) || !valid_probability(qx);
      if (bad || !typical_accepts(px, entropy, typical)) {  // warp-uniform
        if (lane == 0) {
          atomicMin(&s_first_fail, i);
          if (bad) atomicMin(&s_first_bad, i);
        }
        break;
      }
    }
  } else {
    static_assert(METHOD == kGsd, "unknown chain method");
    for (int i = tid; i < n; i += BLOCK) {
      const int8_t flag = gsd_flags[b * L + i];
      if (flag != kGsdPass) {
        atomicMin(&s_first_fail, i);
        if (flag == kGsdBadValues) atomicMin(&s_first_bad, i);
        break;
      }
    }
  }
  __syncthreads();
  const int a = s_first_fail;
  if (s_first_bad == a) {  // the first failing draft's tested values are unusable
    report(kBadProbability);
    return;
  }
  const bool rejected = a < n;

  // ---- phase 2: residual (or bonus) sample from row a
  unsigned char* smem = dynamic_smem<unsigned char>();
  const size_t cache_bytes = AlignUp16(ChainCacheEntries(V) * sizeof(T));
  T* p_cache = CACHE ? reinterpret_cast<T*>(smem) : nullptr;
  T* q_cache = CACHE ? reinterpret_cast<T*>(smem + cache_bytes) : nullptr;
  unsigned* moved_bits = reinterpret_cast<unsigned*>(smem + (CACHE ? 2 * cache_bytes : 0));
  bool bad = false;
  ChainRowLoader<T, CACHE> load{p_row(a), nullptr, p_cache, q_cache, moved_bits, 0.0, 0, V, false, false, false, &bad};
  if (rejected && METHOD != kTypical) {  // typical samples p[b, a] itself
    load.residual = true;
    load.x = static_cast<int>(x_b[a]);
    load.q_row = q_row(a);
    if constexpr (METHOD == kLantern) {
      const int merged = s_merged;
      if (merged > 0) {  // uniform
        const int words = (V + 31) / 32;
        for (int i = tid; i < words; i += BLOCK) moved_bits[i] = 0u;
        __syncthreads();
        const int32_t* nb = cfg.neighbors + static_cast<int64_t>(load.x) * cfg.k;
        for (int m = tid; m < merged; m += BLOCK) atomicOr(&moved_bits[nb[m] >> 5], 1u << (nb[m] & 31));
        if (tid < kWarp) {
          const double gained = warp_gather_sum(ProbRow<T>{load.target}, nb, merged);
          if (tid == 0) s_gained = gained;
        }
        __syncthreads();
        load.relax = true;
        load.gained = s_gained;
      }
    }
  }
  int last_nonzero = -1;
  double total = Sampler::total(load, V, &last_nonzero, sampler_storage);
  if (__syncthreads_or(bad)) {  // an unusable entry in a row the sample reads
    report(kBadProbability);
    return;
  }
  load.from_cache = CACHE;  // later passes: the cached entries (values already checked)
  if (rejected && last_nonzero < 0) {  // the residual vanished (p == q, or rounding): sample p[b, a]
    load.residual = false;
    total = Sampler::total(load, V, &last_nonzero, sampler_storage);
  }
  if (last_nonzero < 0) {  // no mass at all
    report(kBadProbability);
    return;
  }
  const int token = Sampler::search(load, V, static_cast<double>(u_sample[b]) * total, last_nonzero, sampler_storage);
  if (tid == 0) {
    accept_len[b] = a;
    next_token[b] = token;
  }
}

// Dynamic shared memory the chain kernel needs: the row caches (CACHE) and the LANTERN bitmask.
template <class T>
size_t VerifyChainSmemBytes(int vocab, int method, bool cache) {
  const size_t bits = method == kLantern ? static_cast<size_t>((vocab + 31) / 32) * sizeof(unsigned) : 0;
  return (cache ? 2 * AlignUp16(ChainCacheEntries(vocab) * sizeof(T)) : 0) + bits;
}

template <class T, int METHOD, bool CACHE>
cudaError_t LaunchVerifyChain(const T* p, const T* q, const int64_t* draft, const float* u_accept,
                              const float* u_sample, const int64_t* num_drafts, const int8_t* gsd_flags,
                              const ChainParams& cfg, size_t smem, int64_t* accept_len, int64_t* next_token,
                              cudaStream_t stream) {
  auto kernel = VerifyChainKernel<kChainBlock, T, METHOD, CACHE>;
  const cudaError_t status = ensure_dynamic_smem(kernel, smem);
  if (status != cudaSuccess) return status;
  kernel<<<static_cast<unsigned>(cfg.batch), kChainBlock, smem, stream>>>(p, q, draft, u_accept, u_sample, num_drafts,
                                                                          gsd_flags, cfg, accept_len, next_token);
  return cudaGetLastError();
}

// Whether the row caches fit the device's shared memory next to the kernel's static shared memory.
template <class T, int METHOD>
bool ChainCacheFits(size_t smem_cached) {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) return false;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, VerifyChainKernel<kChainBlock, T, METHOD, true>) != cudaSuccess) return false;
  return smem_cached + attr.sharedSizeBytes <= static_cast<size_t>(optin);
}

template <class T, int METHOD>
cudaError_t LaunchVerifyChainMethod(const T* p, const T* q, const int64_t* draft, const float* u_accept,
                                    const float* u_sample, const int64_t* num_drafts, const int8_t* gsd_flags,
                                    const ChainParams& cfg, int64_t* accept_len, int64_t* next_token,
                                    cudaStream_t stream) {
  const size_t cached = VerifyChainSmemBytes<T>(cfg.vocab, METHOD, true);
  if (ChainCacheFits<T, METHOD>(cached)) {
    return LaunchVerifyChain<T, METHOD, true>(p, q, draft, u_accept, u_sample, num_drafts, gsd_flags, cfg, cached,
                                              accept_len, next_token, stream);
  }
  return LaunchVerifyChain<T, METHOD, false>(p, q, draft, u_accept, u_sample, num_drafts, gsd_flags, cfg,
                                             VerifyChainSmemBytes<T>(cfg.vocab, METHOD, false), accept_len,
                                             next_token, stream);
}

// gsd_flags: [batch, L] int8 workspace, used by method gsd only (VerifyChainGsdFlags entries).
inline size_t VerifyChainGsdFlags(int64_t batch, int max_drafts) { return static_cast<size_t>(batch) * max_drafts; }

template <class T>
cudaError_t VerifyChain(const T* p, const T* q, const int64_t* draft, const float* u_accept, const float* u_sample,
                        const int64_t* num_drafts, int method, const ChainParams& cfg, int8_t* gsd_flags,
                        int64_t* accept_len, int64_t* next_token, cudaStream_t stream) {
  if (cfg.batch == 0) return cudaSuccess;
  switch (method) {
    case kExact:
      return LaunchVerifyChainMethod<T, kExact>(p, q, draft, u_accept, u_sample, num_drafts, nullptr, cfg,
                                                      accept_len, next_token, stream);
    case kGsd: {
      const int64_t tests = cfg.batch * cfg.max_drafts;
      if (tests > 0) {
        GsdChainTestKernel<kGsdTestBlock, T><<<static_cast<unsigned>(tests), kGsdTestBlock, 0, stream>>>(
            p, q, draft, u_accept, num_drafts, cfg, gsd_flags);
        const cudaError_t status = cudaGetLastError();
        if (status != cudaSuccess) return status;
      }
      return LaunchVerifyChainMethod<T, kGsd>(p, q, draft, u_accept, u_sample, num_drafts, gsd_flags, cfg,
                                                    accept_len, next_token, stream);
    }
    case kLantern:
      return LaunchVerifyChainMethod<T, kLantern>(p, q, draft, u_accept, u_sample, num_drafts, nullptr, cfg,
                                                        accept_len, next_token, stream);
    case kTypical:
      return LaunchVerifyChainMethod<T, kTypical>(p, q, draft, u_accept, u_sample, num_drafts, nullptr, cfg,
                                                        accept_len, next_token, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace specdec::gpu
