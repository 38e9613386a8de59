// Per-element math of the fused logits -> verification ops, shared by the CPU and CUDA kernels (host and
// device), so the CPU tests exercise what the GPU runs. Semantics: specdec_kernels/reference/verify_logits.py.
// Everything after the float32 processed logit runs in float64 and is rounded to float32 once, so backends
// reproduce the reference's probabilities bit for bit except on a float32 rounding boundary (docs/ALGORITHMS.md
// §3.8): a 1-ulp float64 difference (another exp, another summation order) moves one in about 2^29 values.
#pragma once

#include <cstdint>
#include <cstring>

#include "methods.h"
#include "verify_math.h"

namespace specdec::logits {

//: Temperatures below this are clamped to it (the greedy limit); mirrors reference.verify_logits.MIN_TEMPERATURE.
constexpr double kMinTemperature = 1e-5;

SPECDEC_HD inline int64_t bits_of(double x) {
  int64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

SPECDEC_HD inline double double_of(int64_t b) {
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// Processed logit z = float32((l_u + s * (l_c - l_u)) / T) in float64 (no CFG: l_c / T). T is already clamped.
// One float32 rounding at the end, so an FMA contraction of the float64 steps cannot change z in practice.
SPECDEC_HD inline float processed_logit(double cond, double uncond, bool cfg, double scale, double temperature) {
#if defined(__CUDA_ARCH__)
  // Explicit roundings on the device: no FMA contraction, so every kernel computing z (the row statistics and each
  // entry read) gets the same value, the reference's separate float64 steps.
  const double combined = cfg ? __dadd_rn(uncond, __dmul_rn(scale, __dsub_rn(cond, uncond))) : cond;
#else
  const double combined = cfg ? uncond + scale * (cond - uncond) : cond;
#endif
  return static_cast<float>(combined / temperature);
}

// exp(x) for x <= 0 (x = z - max, so -inf maps to 0) in float64, within 1 ulp of the correctly rounded value:
// Cody-Waite reduction by ln 2 and a degree-13 Taylor polynomial on |r| <= ln2 / 2. Below -708 it returns 0 (the
// true value is < 3.4e-308, far below any float32 probability a row with max entry exp(0) = 1 can have).
// Branch-free (selects through bit masks) so that the CPU loops over it vectorise.
// Range-reduction constants of exp_nonpositive (also used by the CPU's four-lane version).
constexpr double kExpLog2e = 1.4426950408889634, kExpShift = 6755399441055744.0;  // 1.5 * 2^52: round to integer
constexpr double kExpLn2Hi = 6.93147180369123816490e-01, kExpLn2Lo = 1.90821492927058770002e-10;
constexpr double kExpLowest = -708.0;

// exp(r) for |r| <= ln(2) / 2: Taylor series to degree 13 by Horner. T is double, or a vector of doubles with
// scalar broadcasting (the CPU's four-lane exp), so both evaluate the same polynomial.
template <class T>
SPECDEC_HD inline T exp_taylor(T r) {
  constexpr double kInverseFactorials[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0,
                                           1.0 / 3628800.0,    1.0 / 362880.0,    1.0 / 40320.0,
                                           1.0 / 5040.0,       1.0 / 720.0,       1.0 / 120.0,
                                           1.0 / 24.0,         1.0 / 6.0,         0.5,
                                           1.0,                1.0};
  T poly = T{} + kInverseFactorials[0];
  for (int i = 1; i < 14; ++i) poly = poly * r + kInverseFactorials[i];
  return poly;
}

SPECDEC_HD inline double exp_nonpositive(double x) {
  constexpr double kLog2e = kExpLog2e, kShift = kExpShift, kLn2Hi = kExpLn2Hi, kLn2Lo = kExpLn2Lo;
  const bool in_range = x >= kExpLowest;
  const double xc = in_range ? x : kExpLowest;
  const double shifted = xc * kLog2e + kShift;
  const double kd = shifted - kShift;
  const double r = (xc - kd * kLn2Hi) - kd * kLn2Lo;
  const double poly = exp_taylor(r);
  const int64_t k = bits_of(shifted) - bits_of(kShift);
  const double scale = double_of((k + 1023) << 52);
  return in_range ? poly * scale : 0.0;
}

// What processing one logits row leaves behind: the statistics every processed probability of the row is computed
// from (processed_probability), so a backend can compute an entry wherever it reads it instead of materialising the
// row. Filled by a whole-row pass (the CUDA row-statistics kernel); the values are the reference's.
struct RowStatistics {
  double shift;       // the row's max processed logit z (exp(z - shift) <= 1)
  double total;       // sum of exp(z - shift) over the top-k survivors: the normaliser top-p tests against
  double kept_total;  // the same sum over the top-k and top-p survivors: the probabilities' normaliser
  float k_threshold;  // top-k: an entry survives iff z >= k_threshold, the k-th largest z (-inf: top-k off)
  float p_cut;        // top-p: an entry survives iff float32(e / total) >= p_cut (only read when top_p)
  bool top_p;         // top-p is on
  bool usable;        // false: a NaN / +inf processed logit or every logit -inf; the row is no distribution (code 6)
};

// The processed probability of one entry from its processed logit z (processed_logit) and its row's statistics:
// float32(e / kept_total) with e = exp(z - shift), 0 where top-k or top-p drops the entry. The reference's
// rounding (one float32 rounding of float64 values), so equal to its process_logits entry.
SPECDEC_HD inline float processed_probability(float z, const RowStatistics& s) {
  if (!(z >= s.k_threshold)) return 0.0f;
  const double e = exp_nonpositive(static_cast<double>(z) - s.shift);
  if (s.top_p && static_cast<float>(e / s.total) < s.p_cut) return 0.0f;
  return static_cast<float>(e / s.kept_total);
}

// The row status checks are shared with the probability kernels (verify_math.h).
using specdec::chain_row_status;
using specdec::tree_row_status;

}  // namespace specdec::logits
