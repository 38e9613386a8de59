// Fused chain verification (docs/ALGORITHMS.md §3.2-3.4, §3.11; reference:
// specdec_kernels/reference/verify_chain.py), torch-free, written once over row sources (row_sources.cuh):
// verify_chain runs it on probability tensors, verify_chain_logits and jacobi_step on raw logits processed where
// they are read. One launch per call (GSD: two), no [B, L, V] temporaries. The kernels branch on the rule's traits
// (methods.h method_traits) and call its test from ../verify_math.h, shared with the CPU walk
// (csrc/cpu/verify_walk.h); row status codes: methods.h.
#pragma once

#include "gsd_group_mass.cuh"
#include "lantern_relaxed_mass.cuh"
#include "row_sources.cuh"
#include "verify_common.cuh"

namespace specdec::gpu {

struct ChainParams {
  int64_t batch;
  int max_drafts;   // L
  int vocab;        // V
  RuleParams rule;  // the rule (method code, tables, settings)
};

constexpr int kChainBlock = 1024;
// Computed (logits) targets: float64 work per entry read, bound by the SM's float64 units rather than by memory, so
// half the threads with room for their registers (up to 128).
constexpr int kChainBlockComputed = 512;
template <class P>
constexpr int ChainBlock() {
  return P::kComputed ? kChainBlockComputed : kChainBlock;
}
constexpr int kChainItems = 4;  // entries per thread and tile: one 16-byte (float) / 8-byte (half) load
constexpr int kGsdTestBlock = 512;

// Per-draft outcome of the GSD pre-pass.
enum GsdDraftFlag : int8_t { kGsdFail = 0, kGsdPass = 1, kGsdBadValues = 2 };

// GSD pre-pass: every draft's group test at once, one block per (row, draft), so the drafts of a chain
// are verified in parallel; the chain kernel then only scans the flags for the first rejection.
// Grid: B * L blocks. p: the target source [B, L + 1, V]; q: the draft source [B, L, V] (not present: one-hot).
// flags [B, L] int8 (GsdDraftFlag); a draft past num_drafts[b], a row whose num_drafts is out of range or a draft
// id outside [0, V) gets kGsdFail without any read (the chain kernel reports those rows by their status code before
// looking at the flags); a tested row that is not usable gets kGsdBadValues.
// STAGE (computed target sources only): the group routine reads the row about ten times (rank counts, radix
// passes), so the row is computed once into dynamic shared memory (V floats, the same values) and read from there.
template <int BLOCK, bool STAGE, class P, class Q>
__global__ void __launch_bounds__(BLOCK)
    GsdChainTestKernel(P p, Q q, const int64_t* draft, const float* u_accept, const int64_t* num_drafts,
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
    if (!p.usable(b, i) || (q.present() && !q.usable(b, i))) {
      flag = kGsdBadValues;
    } else {
      const typename P::Row p_row = p.row(b, i);
      const typename Q::Row q_row = q.present() ? q.row(b, i) : typename Q::Row{};
      const typename Q::Row* q_ptr = q.present() ? &q_row : nullptr;
      GroupMass g;
      if constexpr (STAGE) {
        float* staged = dynamic_smem<float>();
        for (int j = static_cast<int>(threadIdx.x); j < V; j += BLOCK) staged[j] = p_row(j);
        __syncthreads();
        g = GroupMassBlock<BLOCK>::run(TensorRow<float>{staged, V}, q_ptr, V, static_cast<int>(x), cfg.rule.gsd,
                                       storage);
      } else {
        g = GroupMassBlock<BLOCK>::run(p_row, q_ptr, V, static_cast<int>(x), cfg.rule.gsd, storage);
      }
      if (!g.values_ok || !g.embeddings_ok) {  // a value it read is unusable (code 6)
        flag = kGsdBadValues;
      } else if (group_accepts(static_cast<double>(u_accept[b * L + i]), g.q, g.p)) {
        flag = kGsdPass;
      }
    }
  }
  if (threadIdx.x == 0) flags[b * L + i] = flag;
}

// Phase-2 tile loader: the weights of the row the token is sampled from, read once through the sources (vector
// loads; FROM_CACHE false; with CACHE the entries are kept in shared memory in their stored type) and re-read from
// shared memory by the later passes (FROM_CACHE true), so the sample never reads (or processes) the row twice when
// it fits. Weights: the target row p[b, a] itself (bonus, a rule whose residual is the target, or the zero-residual
// fallback), or the residual max(0, p~_x - q) at the first rejection, where p~_x is the target with LANTERN's merged
// neighbours' mass moved onto x (bitmask `moved`, sum `gained`) and q is one-hot at x when the draft source has no
// rows. Sets *bad on an unusable entry (status code 6) when reading through the sources.
template <class PRow, class QRow, bool CACHE>
struct ChainRowLoader {
  using PStored = typename PRow::Stored;
  using QStored = typename QRow::Stored;
  PRow target;
  QRow q_row;       // only read when residual and has_q
  PStored* p_cache; // CACHE: ChainCacheEntries(V) entries each
  QStored* q_cache;
  const unsigned* moved;
  double gained;
  int x;
  int vocab;
  bool has_q;
  bool residual;
  bool relax;
  bool from_cache;
  bool* bad;

  __device__ void operator()(int j0, double (&w)[kChainItems]) const {
#pragma unroll
    for (int i = 0; i < kChainItems; ++i) w[i] = 0.0;
    if (j0 >= vocab) return;
    const bool with_q = residual && has_q;
    Pack<PStored, kChainItems> pt;
    Pack<QStored, kChainItems> pq;
    if (CACHE && from_cache) {
      pt = *reinterpret_cast<const Pack<PStored, kChainItems>*>(p_cache + j0);
      if (with_q) pq = *reinterpret_cast<const Pack<QStored, kChainItems>*>(q_cache + j0);
    } else {
      pt = target.template pack<kChainItems>(j0);
      if (with_q) pq = q_row.template pack<kChainItems>(j0);
      if constexpr (CACHE) {
        *reinterpret_cast<Pack<PStored, kChainItems>*>(p_cache + j0) = pt;
        if (with_q) *reinterpret_cast<Pack<QStored, kChainItems>*>(q_cache + j0) = pq;
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

// Grid: one block of BLOCK threads per batch row b. Sources (row_sources.cuh): p the target [B, L+1, V], q the
// drafts [B, L, V] (not present: one-hot drafts). Pointers (row-major, contiguous): draft [B, L] int64; u_accept
// [B, L] f32; u_sample [B] f32; num_drafts [B] int64; gsd_flags [B, L] int8 (GSD: GsdChainTestKernel's output);
// accept_len, next_token [B] int64 (written by thread 0; a bad row gets 0 and -code, methods.h).
// METHOD is the rule's code (kUnknownMethod or any code method_traits does not know: every row is code 7); the
// kernel follows its traits: the neighbour table's status (needs_neighbors), the residual kind (over q, over the
// relaxed row, or the target row itself), and calls its acceptance test.
// Status pass: codes 1, 2, 4, 5 (one thread per draft, combined through a shared bitmask: lowest code
// wins), before anything else is read. Phase 1 finds a = the first failing draft (n if none). Every test
// is independent of the others, so:
//   exact:   one thread per draft, u * q(x) < p(x) as an exact float64 product;
//   lantern: one warp per draft (warp_relaxed_mass), p~ > 0 and u * q(x) <= p~;
//   gsd:     one thread per draft reads its pre-pass flag;
//   typical: one warp per draft: the row entropy (warp sum, the whole row checked for code 6), then the test;
// a = the smallest failing index (shared atomicMin), which equals the reference's cumulative AND. A draft
// whose tested row is not usable or whose tested p(x) / q(x) is unusable counts as failing and marks the row code 6
// if it is the first.
// Phase 2 samples from row a only (residual if a < n, bonus row if a == n) with InverseCdf: one float64
// pass reading the row (vector loads, entries checked for code 6 and cached in shared memory with CACHE),
// one up to the crossing tile (from the cache), plus one more total only for a residual that sums to zero,
// which falls back to p[b, a]. A sampled row without mass, or not usable, is code 6.
// Launch bounds (BLOCK, 1): one block per SM (as a block of 1024 threads with more than 32 registers gets anyway),
// so ptxas may use every register a thread can have instead of squeezing to two blocks per SM with spills.
template <int BLOCK, int METHOD, bool CACHE, class P, class Q>
__global__ void __launch_bounds__(BLOCK, 1)
    VerifyChainKernel(P p, Q q, const int64_t* draft, const float* u_accept, const float* u_sample,
                      const int64_t* num_drafts, const int8_t* gsd_flags, ChainParams cfg, int64_t* accept_len,
                      int64_t* next_token) {
  constexpr MethodTraits kTraits = method_traits(METHOD);
  using PRow = typename P::Row;
  using QRow = typename Q::Row;
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
  const int64_t* x_b = draft + b * L;
  const float* u_b = u_accept + b * L;
  auto report = [&](int64_t code) {  // uniform
    if (tid == 0) {
      accept_len[b] = 0;
      next_token[b] = -code;
    }
  };
  if constexpr (!kTraits.chain) {  // not a chain rule of this build: no rule is guessed
    report(kBadMethod);
  } else {
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
      const int32_t* neighbors = kTraits.needs_neighbors ? cfg.rule.neighbors : nullptr;
      for (int i = tid; i < n; i += BLOCK) {
        code = first_failure(code, token_status(x_b[i], V, u_b[i], neighbors, cfg.rule.k));
      }
      if (tid == 0 && !valid_uniform(u_sample[b])) code = first_failure(code, kBadUniform);
      if (code != kRowOk) atomicOr(&s_codes, 1 << code);
    }
    __syncthreads();
    if (s_codes != 0) {  // uniform
      report(__ffs(s_codes) - 1);
      return;
    }

    // ---- phase 1: the accept prefix. The tested values of draft i: p(x) and q(x) (q one-hot: 1), and the row
    // usability of both sources.
    struct Tested {
      double px, qx;
      bool ok;  // both rows usable and both values usable probabilities
    };
    auto tested_values = [&](int i, int64_t x) {
      Tested t;
      const bool rows_ok = p.usable(b, i) && (!q.present() || q.usable(b, i));
      t.px = static_cast<double>(p.row(b, i)(x));
      t.qx = q.present() ? static_cast<double>(q.row(b, i)(x)) : 1.0;
      t.ok = rows_ok && valid_probability(t.px) && valid_probability(t.qx);
      return t;
    };
    if constexpr (METHOD == kExact) {
      for (int i = tid; i < n; i += BLOCK) {
        const Tested t = tested_values(i, x_b[i]);
        const bool ok = t.ok;
        if (!ok || !exact_accepts(static_cast<double>(u_b[i]), t.qx, t.px)) {
          atomicMin(&s_first_fail, i);
          if (!ok) atomicMin(&s_first_bad, i);
          break;  // this thread's later drafts cannot be the first failure
        }
      }
    } else if constexpr (METHOD == kLantern) {
      const int warp = tid / kWarp;
      const int lane = tid & (kWarp - 1);
      int my_fail = -1, my_merged = 0;
      for (int i = warp; i < n; i += BLOCK / kWarp) {
        const int x = static_cast<int>(x_b[i]);
        const PRow row = p.row(b, i);
        auto r = [&](int64_t j) { return static_cast<double>(row(j)); };
        int merged = 0;
        const double p_tilde = warp_relaxed_mass(
            r, x, cfg.rule.neighbors + static_cast<int64_t>(x) * cfg.rule.k, cfg.rule.k, cfg.rule.lantern, &merged);
        const Tested t = tested_values(i, x);  // warp-uniform
        const bool ok = t.ok;
        if (!ok || !lantern_accepts(static_cast<double>(u_b[i]), t.qx, p_tilde)) {
          my_fail = i;
          my_merged = merged;
          if (lane == 0) {
            atomicMin(&s_first_fail, i);
            if (!ok) atomicMin(&s_first_bad, i);
          }
          break;
        }
      }
      __syncthreads();
      if (my_fail >= 0 && my_fail == s_first_fail && lane == 0) s_merged = my_merged;
    } else if constexpr (METHOD == kTypical) {
      const int warp = tid / kWarp;
      const int lane = tid & (kWarp - 1);
      for (int i = warp; i < n; i += BLOCK / kWarp) {
        const PRow row = p.row(b, i);
        double entropy = 0.0;
        bool row_bad = false;
        for (int j = lane; j < V; j += kWarp) {  // the whole row is read: every entry is checked
          const double pj = static_cast<double>(row(j));
          row_bad |= !valid_probability(pj);
          entropy += entropy_term(pj);
        }
        for (int offset = kWarp / 2; offset > 0; offset /= 2) entropy += __shfl_xor_sync(kFullMask, entropy, offset);
        row_bad = __any_sync(kFullMask, row_bad);
        const Tested t = tested_values(i, x_b[i]);
        const bool ok = t.ok && !row_bad;
        if (!ok || !typical_accepts(t.px, entropy, cfg.rule.typical)) {  // warp-uniform
          if (lane == 0) {
            atomicMin(&s_first_fail, i);
            if (!ok) atomicMin(&s_first_bad, i);
          }
          break;
        }
      }
    } else {
      static_assert(METHOD == kGsd, "a chain rule without an acceptance test in this kernel");
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
    // The residual's kind decides what the sample reads: over q reads q[b, a] too; the target kind only p[b, a].
    const bool residual = a < n && kTraits.residual != Residual::kTarget;
    const bool with_q = residual && q.present();
    if (s_first_bad == a || !p.usable(b, a) || (with_q && !q.usable(b, a))) {  // uniform
      report(kBadProbability);  // the first failing draft's tested values, or a row the sample reads
      return;
    }

    // ---- phase 2: residual (or bonus) sample from row a
    using PStored = typename PRow::Stored;
    using QStored = typename QRow::Stored;
    unsigned char* smem = dynamic_smem<unsigned char>();
    const size_t p_cache_bytes = AlignUp16(ChainCacheEntries(V) * sizeof(PStored));
    const size_t q_cache_bytes = AlignUp16(ChainCacheEntries(V) * sizeof(QStored));
    PStored* p_cache = CACHE ? reinterpret_cast<PStored*>(smem) : nullptr;
    QStored* q_cache = CACHE ? reinterpret_cast<QStored*>(smem + p_cache_bytes) : nullptr;
    unsigned* moved_bits = reinterpret_cast<unsigned*>(smem + (CACHE ? p_cache_bytes + q_cache_bytes : 0));
    bool bad = false;
    ChainRowLoader<PRow, QRow, CACHE> load{p.row(b, a), QRow{}, p_cache, q_cache, moved_bits, 0.0, 0, V,
                                           false,        false,  false,   false,   &bad};
    if (residual) {
      load.residual = true;
      load.x = static_cast<int>(x_b[a]);
      load.has_q = with_q;
      if (with_q) load.q_row = q.row(b, a);
      if constexpr (kTraits.residual == Residual::kOverRelaxed) {
        const int merged = s_merged;
        if (merged > 0) {  // uniform
          const int words = (V + 31) / 32;
          for (int i = tid; i < words; i += BLOCK) moved_bits[i] = 0u;
          __syncthreads();
          const int32_t* nb = cfg.rule.neighbors + static_cast<int64_t>(load.x) * cfg.rule.k;
          for (int m = tid; m < merged; m += BLOCK) atomicOr(&moved_bits[nb[m] >> 5], 1u << (nb[m] & 31));
          if (tid < kWarp) {
            auto r = [&](int64_t j) { return static_cast<double>(load.target(j)); };
            const double gained = warp_gather_sum(r, nb, merged);
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
    if (residual && last_nonzero < 0) {  // the residual vanished (p == q, or rounding): sample p[b, a]
      load.residual = false;
      total = Sampler::total(load, V, &last_nonzero, sampler_storage);
    }
    if (last_nonzero < 0) {  // no mass at all
      report(kBadProbability);
      return;
    }
    const int token =
        Sampler::search(load, V, static_cast<double>(u_sample[b]) * total, last_nonzero, sampler_storage);
    if (tid == 0) {
      accept_len[b] = a;
      next_token[b] = token;
    }
  }
}

// Dynamic shared memory the chain kernel needs: the row caches (CACHE) and the relaxed residual's bitmask.
template <class P, class Q>
size_t VerifyChainSmemBytes(int vocab, bool relaxed, bool cache) {
  const size_t bits = relaxed ? static_cast<size_t>((vocab + 31) / 32) * sizeof(unsigned) : 0;
  const size_t p_bytes = AlignUp16(ChainCacheEntries(vocab) * sizeof(typename P::Row::Stored));
  const size_t q_bytes = AlignUp16(ChainCacheEntries(vocab) * sizeof(typename Q::Row::Stored));
  return (cache ? p_bytes + q_bytes : 0) + bits;
}

template <int METHOD, bool CACHE, class P, class Q>
cudaError_t LaunchVerifyChain(const P& p, const Q& q, const int64_t* draft, const float* u_accept,
                              const float* u_sample, const int64_t* num_drafts, const int8_t* gsd_flags,
                              const ChainParams& cfg, size_t smem, int64_t* accept_len, int64_t* next_token,
                              cudaStream_t stream) {
  auto kernel = VerifyChainKernel<ChainBlock<P>(), METHOD, CACHE, P, Q>;
  const cudaError_t status = ensure_dynamic_smem(kernel, smem);
  if (status != cudaSuccess) return status;
  kernel<<<static_cast<unsigned>(cfg.batch), ChainBlock<P>(), smem, stream>>>(p, q, draft, u_accept, u_sample, num_drafts,
                                                                          gsd_flags, cfg, accept_len, next_token);
  return cudaGetLastError();
}

// Whether the row caches fit the device's shared memory next to the kernel's static shared memory.
template <int METHOD, class P, class Q>
bool ChainCacheFits(size_t smem_cached) {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) return false;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, VerifyChainKernel<ChainBlock<P>(), METHOD, true, P, Q>) != cudaSuccess) {
    return false;
  }
  return smem_cached + attr.sharedSizeBytes <= static_cast<size_t>(optin);
}

template <int METHOD, class P, class Q>
cudaError_t LaunchVerifyChainMethod(const P& p, const Q& q, const int64_t* draft, const float* u_accept,
                                    const float* u_sample, const int64_t* num_drafts, const int8_t* gsd_flags,
                                    const ChainParams& cfg, int64_t* accept_len, int64_t* next_token,
                                    cudaStream_t stream) {
  constexpr bool kRelaxed = method_traits(METHOD).residual == Residual::kOverRelaxed;
  const size_t cached = VerifyChainSmemBytes<P, Q>(cfg.vocab, kRelaxed, true);
  if (ChainCacheFits<METHOD, P, Q>(cached)) {
    return LaunchVerifyChain<METHOD, true>(p, q, draft, u_accept, u_sample, num_drafts, gsd_flags, cfg, cached,
                                           accept_len, next_token, stream);
  }
  return LaunchVerifyChain<METHOD, false>(p, q, draft, u_accept, u_sample, num_drafts, gsd_flags, cfg,
                                          VerifyChainSmemBytes<P, Q>(cfg.vocab, kRelaxed, false), accept_len,
                                          next_token, stream);
}

// The GSD pre-pass over B * L blocks; a computed target row is staged in shared memory when it fits.
template <class P, class Q>
cudaError_t LaunchGsdChainTest(const P& p, const Q& q, const int64_t* draft, const float* u_accept,
                               const int64_t* num_drafts, const ChainParams& cfg, int8_t* gsd_flags,
                               cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(cfg.batch * cfg.max_drafts);
  if constexpr (P::kComputed) {
    const size_t staged = static_cast<size_t>(cfg.vocab) * sizeof(float);
    auto kernel = GsdChainTestKernel<kGsdTestBlock, true, P, Q>;
    int device = 0, optin = 0;
    cudaFuncAttributes attr{};
    if (cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
        cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && staged + attr.sharedSizeBytes <= size_t(optin) &&
        ensure_dynamic_smem(kernel, staged) == cudaSuccess) {
      kernel<<<grid, kGsdTestBlock, staged, stream>>>(p, q, draft, u_accept, num_drafts, cfg, gsd_flags);
      return cudaGetLastError();
    }
    (void)cudaGetLastError();  // a refused query or attribute: compute the entries where they are read
  }
  GsdChainTestKernel<kGsdTestBlock, false, P, Q><<<grid, kGsdTestBlock, 0, stream>>>(p, q, draft, u_accept,
                                                                                     num_drafts, cfg, gsd_flags);
  return cudaGetLastError();
}

// gsd_flags: [batch, L] int8 workspace, used by the rules whose test the GSD pre-pass runs (VerifyChainGsdFlags
// entries).
inline size_t VerifyChainGsdFlags(int64_t batch, int max_drafts) { return static_cast<size_t>(batch) * max_drafts; }

// Chain verification of every row over sources p (target [B, L + 1, V]) and q (drafts [B, L, V], or no rows), with
// the rule cfg.rule.method; an unknown code reports every row as code 7. No host synchronisation.
template <class P, class Q>
cudaError_t VerifyChain(const P& p, const Q& q, const int64_t* draft, const float* u_accept, const float* u_sample,
                        const int64_t* num_drafts, const ChainParams& cfg, int8_t* gsd_flags, int64_t* accept_len,
                        int64_t* next_token, cudaStream_t stream) {
  if (cfg.batch == 0) return cudaSuccess;
  switch (cfg.rule.method) {
    case kExact:
      return LaunchVerifyChainMethod<kExact>(p, q, draft, u_accept, u_sample, num_drafts, nullptr, cfg, accept_len,
                                             next_token, stream);
    case kGsd: {
      const int64_t tests = cfg.batch * cfg.max_drafts;
      if (tests > 0) {
        const cudaError_t status = LaunchGsdChainTest(p, q, draft, u_accept, num_drafts, cfg, gsd_flags, stream);
        if (status != cudaSuccess) return status;
      }
      return LaunchVerifyChainMethod<kGsd>(p, q, draft, u_accept, u_sample, num_drafts, gsd_flags, cfg, accept_len,
                                           next_token, stream);
    }
    case kLantern:
      return LaunchVerifyChainMethod<kLantern>(p, q, draft, u_accept, u_sample, num_drafts, nullptr, cfg, accept_len,
                                               next_token, stream);
    case kTypical:
      return LaunchVerifyChainMethod<kTypical>(p, q, draft, u_accept, u_sample, num_drafts, nullptr, cfg, accept_len,
                                               next_token, stream);
    default:  // every row reports code 7 (no cache, no shared memory)
      return LaunchVerifyChain<kUnknownMethod, false>(p, q, draft, u_accept, u_sample, num_drafts, nullptr, cfg, 0,
                                                      accept_len, next_token, stream);
  }
}

}  // namespace specdec::gpu
