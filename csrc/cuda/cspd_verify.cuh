// Continuous speculative decoding verification (docs/ALGORITHMS.md §3.6; reference:
// specdec_kernels/reference/cspd_verify.py), torch-free kernel and launcher. Everything in float64;
// Phi^-1(u) = sqrt(2) * erfinv(2u - 1) with CUDA's double erfinv (a few ulp from torch.erfinv, so
// resampled tokens agree to float32 rounding; decisions flip only at exact ties).
#pragma once

#include "verify_common.cuh"

namespace specdec::gpu {

constexpr double kCspdUMin = 5.9604644775390625e-08;  // 2^-24: proposals' uniforms are clamped to [2^-24, 1 - 2^-24]
constexpr double kSqrt2 = 1.4142135623730950488;
constexpr int kCspdBlock = 128;

// Proposal t of token i in dimension d: y = mu_p + sigma_p * Phi^-1(u_prop[i, t, d]).
__device__ __forceinline__ double cspd_proposal(double u, double mu_p, double sigma_p) {
  const double uc = fmin(fmax(u, kCspdUMin), 1.0 - kCspdUMin);
  return mu_p + sigma_p * (kSqrt2 * erfinv(2.0 * uc - 1.0));
}

// A token that is not verified: NaN tokens, accepted = fallback = false, status = -code.
__device__ __forceinline__ void cspd_report(int64_t i, int64_t o, int dim, int64_t code, float* tokens, bool* accepted,
                                            bool* fallback, int32_t* status) {
  accepted[i] = false;
  fallback[i] = false;
  status[i] = static_cast<int32_t>(-code);
  for (int d = 0; d < dim; ++d) tokens[o + d] = __int_as_float(0x7fc00000);  // NaN
}

// Grid: one thread per token i (tokens are independent: no prefix truncation).
//   x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p [n, dim] float32; u_accept [n]; u_prop [n, tries, dim];
//   u_ar [n, tries] float32; tokens [n, dim] float32; accepted, fallback [n] bool; status [n] int32.
// log c = sum_d (s_q - s_p); x is accepted iff log u_accept < log rho (tempered by tau); otherwise the
// first proposal y_t with u_ar[t] < 1 - q0(y_t) / (c p0(y_t)) is taken, else y_K with fallback set.
// Sums run by dim over each dim's whole term (log c's share s_q - s_p included) and are compensated
// (verify_math.h CompensatedSum), as on the CPU. Row status (methods.h): a bad
// u_accept or a NaN / inf input / sigma <= 0 (before any arithmetic), or a bad u_prop / u_ar of a try it
// computes, ends the row with tokens NaN, accepted = fallback = false, status = -code (no host sync).
// Proposals are recomputed for the chosen try instead of being stored (dim is a runtime size).
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    CspdVerifyKernel(const float* x, const float* mu_q, const float* sigma_q, const float* mu_p, const float* sigma_p,
                     const float* s_q, const float* s_p, const float* u_accept, const float* u_prop, const float* u_ar,
                     int64_t n, int dim, int tries, double tau, float* tokens, bool* accepted, bool* fallback,
                     int32_t* status) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * BLOCK + threadIdx.x;
  if (i >= n) return;
  const int64_t o = i * dim;
  const int64_t first = cspd_row_status(u_accept[i], x + o, mu_q + o, sigma_q + o, mu_p + o, sigma_p + o, s_q + o,
                                        s_p + o, dim);
  if (first != kRowOk) {
    cspd_report(i, o, dim, first, tokens, accepted, fallback, status);
    return;
  }
  CompensatedSum log_rho;  // by dim, log c's share (s_q - s_p) included
  for (int d = 0; d < dim; ++d) {
    const double xd = x[o + d], mp = mu_p[o + d], sp = sigma_p[o + d], mq = mu_q[o + d], sq = sigma_q[o + d];
    const double zp = (xd - mp) / (tau * sp);
    const double zq = (xd - mq) / (tau * sq);
    log_rho.add(-0.5 * zp * zp + 0.5 * zq * zq + log(sq) - log(sp) +
                (static_cast<double>(s_q[o + d]) - static_cast<double>(s_p[o + d])));
  }
  const bool acc = log(static_cast<double>(u_accept[i])) < log_rho.value();
  accepted[i] = acc;
  status[i] = 0;
  if (acc) {
    fallback[i] = false;
    for (int d = 0; d < dim; ++d) tokens[o + d] = x[o + d];
    return;
  }
  int chosen = tries - 1;
  bool found = false;
  for (int t = 0; t < tries && !found; ++t) {
    const float* u_t = u_prop + (i * tries + t) * dim;
    if (!valid_uniform(u_ar[i * tries + t]) || !all_uniform(u_t, dim)) {
      cspd_report(i, o, dim, kBadUniform, tokens, accepted, fallback, status);
      return;
    }
    CompensatedSum log_ratio;  // log q0(y) - log c - log p0(y), by dim (the 0.5 log 2pi terms cancel)
    for (int d = 0; d < dim; ++d) {
      const double mp = mu_p[o + d], sp = sigma_p[o + d], mq = mu_q[o + d], sq = sigma_q[o + d];
      const double y = cspd_proposal(u_t[d], mp, sp);
      const double zq = (y - mq) / sq, zp = (y - mp) / sp;
      log_ratio.add(-0.5 * zq * zq + 0.5 * zp * zp - log(sq) + log(sp) -
                    (static_cast<double>(s_q[o + d]) - static_cast<double>(s_p[o + d])));
    }
    if (static_cast<double>(u_ar[i * tries + t]) < -expm1(log_ratio.value())) {
      chosen = t;
      found = true;
    }
  }
  fallback[i] = !found;
  const float* u_c = u_prop + (i * tries + chosen) * dim;
  for (int d = 0; d < dim; ++d) tokens[o + d] = static_cast<float>(cspd_proposal(u_c[d], mu_p[o + d], sigma_p[o + d]));
}

inline cudaError_t CspdVerify(const float* x, const float* mu_q, const float* sigma_q, const float* mu_p,
                              const float* sigma_p, const float* s_q, const float* s_p, const float* u_accept,
                              const float* u_prop, const float* u_ar, int64_t n, int dim, int tries, double tau,
                              float* tokens, bool* accepted, bool* fallback, int32_t* status, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t blocks = (n + kCspdBlock - 1) / kCspdBlock;
  CspdVerifyKernel<kCspdBlock><<<static_cast<unsigned>(blocks), kCspdBlock, 0, stream>>>(
      x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar, n, dim, tries, tau, tokens, accepted,
      fallback, status);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
