// Processed logits rows on the CPU (torch-free, host only): CFG, temperature, top-k, top-p and softmax applied to
// one raw logits row into a thread-local float64 buffer, exactly the reference's processing
// (specdec_kernels/reference/verify_logits.py; per-element steps in ../verify_logits_math.h, shared with CUDA).
// The row walks read such rows through LogitsRows (verify_walk.h), so a logits row is processed only where a
// verification or a Jacobi refresh reads it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "../verify_logits_math.h"

namespace specdec::cpu {

using logits::exp_nonpositive;

// ------------------------------------------------------------------------------------------ vectorised exp

#if defined(__x86_64__) && defined(__GNUC__)
typedef double Vec4d __attribute__((vector_size(32)));
typedef long long Vec4i __attribute__((vector_size(32)));

// exp_nonpositive on four lanes (same steps; AVX2 + FMA): about 6x faster than a scalar std::exp loop.
__attribute__((target("avx2,fma"))) inline void exp_in_place_avx2(double* x, int64_t n) {
  int64_t i = 0;
  const Vec4d shift = Vec4d{} + logits::kExpShift, low = Vec4d{} + logits::kExpLowest;
  for (; i + 4 <= n; i += 4) {
    Vec4d v;
    __builtin_memcpy(&v, x + i, sizeof v);
    const Vec4i in_range = v >= low;
    const Vec4d xc = in_range ? v : low;
    const Vec4d shifted = xc * logits::kExpLog2e + shift;
    const Vec4d kd = shifted - shift;
    const Vec4d r = (xc - kd * logits::kExpLn2Hi) - kd * logits::kExpLn2Lo;
    const Vec4d poly = logits::exp_taylor(r);
    const Vec4i k = (Vec4i)shifted - (Vec4i)shift;
    const Vec4d scale = (Vec4d)((k + 1023) << 52);
    v = (Vec4d)((Vec4i)(poly * scale) & in_range);
    __builtin_memcpy(x + i, &v, sizeof v);
  }
  for (; i < n; ++i) x[i] = exp_nonpositive(x[i]);
}

typedef float Vec4f __attribute__((vector_size(16)));
typedef int Vec4i32 __attribute__((vector_size(16)));

// Processed logits of float32 rows, four at a time (the steps of logits::processed_logit in float64; the FMA this
// target contracts u + s * (c - u) into changes z only on a float32 rounding boundary), with their max and
// finiteness. Returns false when a processed logit is NaN or +inf.
template <bool CFG, bool DIVIDE>
__attribute__((target("avx2,fma"))) bool processed_row_avx2(const float* cond, const float* uncond, int64_t n,
                                                            double scale, double temperature, float* z,
                                                            float* z_max) {
  const float inf = std::numeric_limits<float>::infinity();
  Vec4f lane_max = Vec4f{} - inf;
  Vec4i32 lane_ok = Vec4i32{} - 1;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    Vec4f cf;
    __builtin_memcpy(&cf, cond + i, sizeof cf);
    Vec4d c = __builtin_convertvector(cf, Vec4d);
    if constexpr (CFG) {
      Vec4f uf;
      __builtin_memcpy(&uf, uncond + i, sizeof uf);
      const Vec4d u = __builtin_convertvector(uf, Vec4d);
      c = u + scale * (c - u);
    }
    if constexpr (DIVIDE) c = c / temperature;
    const Vec4f zf = __builtin_convertvector(c, Vec4f);
    __builtin_memcpy(z + i, &zf, sizeof zf);
    lane_ok &= zf < inf;  // false for NaN and +inf
    lane_max = zf > lane_max ? zf : lane_max;
  }
  float best = -inf;
  bool ok = true;
  for (int l = 0; l < 4; ++l) {
    best = lane_max[l] > best ? lane_max[l] : best;
    ok &= lane_ok[l] != 0;
  }
  for (; i < n; ++i) {
    const float zi = logits::processed_logit(cond[i], CFG ? uncond[i] : 0.0, CFG, scale, temperature);
    z[i] = zi;
    ok &= zi < inf;
    best = zi > best ? zi : best;
  }
  *z_max = best;
  return ok;
}

inline bool processed_row_fast(const float* cond, const float* uncond, int64_t n, double scale, double temperature,
                        float* z, float* z_max) {
  const bool divide = temperature != 1.0;  // x / 1 == x: skip the division
  if (uncond) {
    return divide ? processed_row_avx2<true, true>(cond, uncond, n, scale, temperature, z, z_max)
                  : processed_row_avx2<true, false>(cond, uncond, n, scale, temperature, z, z_max);
  }
  return divide ? processed_row_avx2<false, true>(cond, uncond, n, scale, temperature, z, z_max)
                : processed_row_avx2<false, false>(cond, uncond, n, scale, temperature, z, z_max);
}

inline const bool kHasAvx2Fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
inline bool processed_row_fast(const float*, const float*, int64_t, double, double, float*, float*) { return false; }
inline const bool kHasAvx2Fma = false;
inline void exp_in_place_avx2(double*, int64_t) {}
#endif

inline void exp_in_place(double* x, int64_t n) {
  if (kHasAvx2Fma) return exp_in_place_avx2(x, n);
  for (int64_t i = 0; i < n; ++i) x[i] = exp_nonpositive(x[i]);
}

// ------------------------------------------------------------------------------------------ row processing

struct Processing {
  bool cfg;
  double scale;
  double temperature;  // clamped
  int64_t top_k;       // 0 = off
  double top_p;        // >= 1 = off
};

inline Processing make_processing(std::optional<double> cfg_scale, double temperature, int64_t top_k, double top_p) {
  return {cfg_scale.has_value(), cfg_scale.value_or(0.0), std::max(temperature, logits::kMinTemperature), top_k,
          top_p};
}

// A float's position in the total order of floats as an unsigned key (-0 just below +0; NaN never reaches here).
inline uint32_t order_key(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

inline float from_order_key(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// The k-th largest of z[0..n) (1 <= k <= n), by radix select on the order keys: three histogram passes of 11, 11
// and 10 bits, branch-free per element. std::nth_element's data-dependent branches mispredict about half the time
// on logits (5-10x slower at V = 1k-16k); this costs three streaming passes.
inline float kth_largest(const float* z, int64_t n, int64_t k, std::vector<uint32_t>& keys,
                         std::vector<uint32_t>& hist) {
  keys.resize(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = order_key(z[i]);
  uint32_t prefix = 0, mask = 0;
  int64_t remaining = k;  // rank of the wanted key among the keys matching the prefix, from the top
  constexpr int kShifts[3] = {21, 10, 0};
  constexpr int kWidths[3] = {11, 11, 10};
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = kShifts[pass];
    const uint32_t bins = 1u << kWidths[pass];
    hist.assign(bins, 0u);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t key = keys[i];
      hist[(key >> shift) & (bins - 1)] += static_cast<uint32_t>((key & mask) == prefix);
    }
    uint32_t bucket = bins - 1;
    for (;; --bucket) {  // from the top: the bucket holding the remaining-th largest matching key
      if (static_cast<int64_t>(hist[bucket]) >= remaining || bucket == 0) break;
      remaining -= hist[bucket];
    }
    prefix |= bucket << shift;
    mask |= (bins - 1) << shift;
  }
  return from_order_key(prefix);
}

// One processed row: weights e (exp(z - max) over the kept tokens, 0 elsewhere) and their float64 total;
// probability(j) = float32(e[j] / total), exactly the reference's rounding.
struct ProcessedRow {
  std::vector<float> z, kept_probs;
  std::vector<uint32_t> keys, hist;
  std::vector<int64_t> kept_ids;
  std::vector<double> e;
  double total = 0.0;

  float prob(int64_t j) const { return static_cast<float>(e[j] / total); }

  // Processes one row; false when the result would not be a distribution (NaN / +inf processed logits, or
  // every logit -inf): the caller reports row code 6.
  template <typename T>
  bool load(const T* cond, const T* uncond, int64_t vocab, const Processing& proc) {
    z.resize(vocab);
    e.resize(vocab);
    float z_max = -std::numeric_limits<float>::infinity();
    bool finite = true;
    const bool cfg = uncond != nullptr;  // draft logits of B rows are not guided even when the target is
    if (std::is_same_v<T, float> && kHasAvx2Fma) {
      finite = processed_row_fast(reinterpret_cast<const float*>(cond), reinterpret_cast<const float*>(uncond),
                                  vocab, proc.scale, proc.temperature, z.data(), &z_max);
    } else {
      for (int64_t j = 0; j < vocab; ++j) {
        const double c = static_cast<double>(static_cast<float>(cond[j]));
        const double u = cfg ? static_cast<double>(static_cast<float>(uncond[j])) : 0.0;
        const float zj = logits::processed_logit(c, u, cfg, proc.scale, proc.temperature);
        z[j] = zj;
        finite &= zj < std::numeric_limits<float>::infinity();  // false for NaN and +inf
        z_max = zj > z_max ? zj : z_max;
      }
    }
    if (!finite || z_max == -std::numeric_limits<float>::infinity()) return false;
    const double shift = static_cast<double>(z_max);
    const bool top_k = proc.top_k > 0 && proc.top_k < vocab;
    kept_ids.clear();
    if (top_k) {
      // The k-th largest value (ties at it kept, as torch.topk thresholding); the others get exp(-inf) = 0.
      const float threshold = kth_largest(z.data(), vocab, proc.top_k, keys, hist);
      constexpr double kDropped = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < vocab; ++j) e[j] = z[j] >= threshold ? static_cast<double>(z[j]) - shift : kDropped;
      if (proc.top_p < 1.0) {  // top-p then sorts only the kept tokens
        kept_ids.resize(vocab);
        int64_t kept = 0;
        for (int64_t j = 0; j < vocab; ++j) {  // branch-free compaction
          kept_ids[kept] = j;
          kept += static_cast<int64_t>(z[j] >= threshold);
        }
        kept_ids.resize(kept);
      }
    } else {
      for (int64_t j = 0; j < vocab; ++j) e[j] = static_cast<double>(z[j]) - shift;
    }
    exp_in_place(e.data(), vocab);
    // Four interleaved float64 accumulators (a sequential sum is bound by add latency); the order differs from the
    // reference's only at float64 rounding level.
    double lane[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t j = 0;
    for (; j + 4 <= vocab; j += 4) {
      for (int l = 0; l < 4; ++l) lane[l] += e[j + l];
    }
    for (; j < vocab; ++j) lane[0] += e[j];
    total = (lane[0] + lane[1]) + (lane[2] + lane[3]);
    if (proc.top_p < 1.0) apply_top_p(vocab, proc);
    return true;
  }

  // Top-p on p1 = float32(e / total): keep j iff the float64 mass of strictly more probable tokens, summed
  // sequentially from the most probable, is < top_p (the reference's rule, tie groups kept whole).
  void apply_top_p(int64_t vocab, const Processing& proc) {
    const bool sparse = proc.top_k > 0 && proc.top_k < vocab;
    kept_probs.clear();
    if (sparse) {
      for (int64_t j : kept_ids) kept_probs.push_back(prob(j));
    } else {
      kept_probs.resize(vocab);
      for (int64_t j = 0; j < vocab; ++j) kept_probs[j] = prob(j);
    }
    std::sort(kept_probs.begin(), kept_probs.end(), std::greater<float>());
    double before = 0.0;
    float cut = kept_probs.front();
    for (size_t i = 0; i < kept_probs.size();) {
      if (!(before < proc.top_p)) break;
      const float value = kept_probs[i];
      cut = value;
      for (; i < kept_probs.size() && kept_probs[i] == value; ++i) before += static_cast<double>(value);
    }
    auto drop = [&](int64_t j) {
      if (prob(j) < cut) e[j] = 0.0;
    };
    if (sparse) {
      for (int64_t j : kept_ids) drop(j);
    } else {
      for (int64_t j = 0; j < vocab; ++j) drop(j);
    }
    double kept_total = 0.0;
    for (int64_t j = 0; j < vocab; ++j) kept_total += e[j];
    total = kept_total;
  }
};

// Rows per task of at::parallel_for: a row costs about V element passes, and below ~2^16 element passes per task
// the fork/join (and, on a loaded machine, waiting for a descheduled worker) costs more than it saves.
inline int64_t row_grain(int64_t vocab) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(vocab, 1)); }

}  // namespace specdec::cpu
