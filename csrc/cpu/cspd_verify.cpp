// CPU CSpD verification: independent per-token Gaussian acceptance and acceptance-rejection
// resampling from the target's final-step Gaussian, all in float64 (docs/ALGORITHMS.md §3.6).
// Row status (methods.h): a bad uniform it reads (u_accept, u_prop / u_ar of a computed try; code 5) or a
// NaN / inf input or a sigma <= 0 (code 6) ends the row: tokens NaN, accepted = fallback = false,
// status = -code.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../checks.h"
#include "../verify_math.h"

namespace specdec::cpu {
namespace {

constexpr double kUMin = 5.9604644775390625e-08;  // 2^-24

// erf^-1 to float64 accuracy: a rational first guess refined by Newton steps on erf / erfc.
double erfinv(double y) {
  const double w = -std::log((1.0 - y) * (1.0 + y));
  double x;
  if (w < 5.0) {
    const double v = w - 2.5;
    double c = 2.81022636e-08;
    for (double a : {3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
                     -0.00417768164, 0.246640727, 1.50140941})
      c = c * v + a;
    x = c * y;
  } else {
    const double v = std::sqrt(w) - 3.0;
    double c = -0.000200214257;
    for (double a : {0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613, 0.00943887047,
                     1.00167406, 2.83297682})
      c = c * v + a;
    x = c * y;
  }
  const double two_over_sqrt_pi = 1.1283791670955126;
  for (int it = 0; it < 3; ++it) {  // Newton; erfc keeps precision in the tails
    const double err = std::fabs(y) > 0.5 ? std::copysign(std::erfc(std::fabs(x)) - (1.0 - std::fabs(y)), -x)
                                          : std::erf(x) - y;
    x -= err / (two_over_sqrt_pi * std::exp(-x * x));
  }
  return x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cspd_verify_cpu(
    const at::Tensor& x_in, const at::Tensor& mu_q_in, const at::Tensor& sigma_q_in, const at::Tensor& mu_p_in,
    const at::Tensor& sigma_p_in, const at::Tensor& s_q_in, const at::Tensor& s_p_in, const at::Tensor& u_accept_in,
    const at::Tensor& u_prop_in, const at::Tensor& u_ar_in, double inner_temperature) {
  check_cspd(x_in, mu_q_in, sigma_q_in, mu_p_in, sigma_p_in, s_q_in, s_p_in, u_accept_in, u_prop_in, u_ar_in);
  const int64_t n = x_in.size(0), dim = x_in.size(1), tries = u_prop_in.size(1);
  const at::Tensor x = x_in.contiguous(), mq = mu_q_in.contiguous(), sq = sigma_q_in.contiguous(),
                   mp = mu_p_in.contiguous(), sp = sigma_p_in.contiguous(), s_q = s_q_in.contiguous(),
                   s_p = s_p_in.contiguous(), ua = u_accept_in.contiguous(), up = u_prop_in.contiguous(),
                   uar = u_ar_in.contiguous();
  at::Tensor tokens = at::empty({n, dim}, x.options());
  at::Tensor accepted = at::empty({n}, x.options().dtype(at::kBool));
  at::Tensor fallback = at::empty({n}, x.options().dtype(at::kBool));
  at::Tensor status = at::empty({n}, x.options().dtype(at::kInt));
  const float *X = x.data_ptr<float>(), *MQ = mq.data_ptr<float>(), *SQ = sq.data_ptr<float>(),
              *MP = mp.data_ptr<float>(), *SP = sp.data_ptr<float>(), *SQS = s_q.data_ptr<float>(),
              *SPS = s_p.data_ptr<float>(), *UA = ua.data_ptr<float>(), *UP = up.data_ptr<float>(),
              *UAR = uar.data_ptr<float>();
  float* T = tokens.data_ptr<float>();
  bool* ACC = accepted.data_ptr<bool>();
  bool* FB = fallback.data_ptr<bool>();
  int32_t* ST = status.data_ptr<int32_t>();
  const double tau = inner_temperature;
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    std::vector<double> y(dim);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t o = i * dim;
      auto report = [&](int64_t code) {
        ACC[i] = FB[i] = false;
        ST[i] = static_cast<int32_t>(-code);
        for (int64_t d = 0; d < dim; ++d) T[o + d] = std::numeric_limits<float>::quiet_NaN();
      };
      const int64_t first = cspd_row_status(UA[i], X + o, MQ + o, SQ + o, MP + o, SP + o, SQS + o, SPS + o, dim);
      if (first != kRowOk) {
        report(first);
        continue;
      }
      // One compensated (Neumaier) float64 sum over d of each dim's whole term, log c's share included: the
      // decisions then match the other backends' pairwise sums at D up to 2^20 (docs/ALGORITHMS.md §3.6).
      CompensatedSum log_rho;
      for (int64_t d = 0; d < dim; ++d) {
        const double zp = (double(X[o + d]) - MP[o + d]) / (tau * SP[o + d]);
        const double zq = (double(X[o + d]) - MQ[o + d]) / (tau * SQ[o + d]);
        log_rho.add(-0.5 * zp * zp + 0.5 * zq * zq + std::log(double(SQ[o + d])) - std::log(double(SP[o + d])) +
                    (static_cast<double>(SQS[o + d]) - static_cast<double>(SPS[o + d])));
      }
      ACC[i] = std::log(static_cast<double>(UA[i])) < log_rho.value();
      FB[i] = false;
      ST[i] = 0;
      if (ACC[i]) {
        for (int64_t d = 0; d < dim; ++d) T[o + d] = X[o + d];
        continue;
      }
      bool found = false;
      int64_t code = kRowOk;
      for (int64_t t = 0; t < tries && !found; ++t) {
        const float* u_t = UP + (i * tries + t) * dim;
        if (!valid_uniform(UAR[i * tries + t]) || !all_uniform(u_t, dim)) {
          code = kBadUniform;
          break;
        }
        CompensatedSum log_ratio;  // log q0(y) - log c - log p0(y), by dim (the 0.5 log 2pi terms cancel)
        for (int64_t d = 0; d < dim; ++d) {
          const double u = std::min(std::max(static_cast<double>(u_t[d]), kUMin), 1.0 - kUMin);
          y[d] = MP[o + d] + SP[o + d] * (std::sqrt(2.0) * erfinv(2.0 * u - 1.0));
          const double zq = (y[d] - MQ[o + d]) / SQ[o + d], zp = (y[d] - MP[o + d]) / SP[o + d];
          log_ratio.add(-0.5 * zq * zq + 0.5 * zp * zp - std::log(double(SQ[o + d])) + std::log(double(SP[o + d])) -
                        (static_cast<double>(SQS[o + d]) - static_cast<double>(SPS[o + d])));
        }
        found = static_cast<double>(UAR[i * tries + t]) < -std::expm1(log_ratio.value());
      }
      if (code != kRowOk) {
        report(code);
        continue;
      }
      FB[i] = !found;
      for (int64_t d = 0; d < dim; ++d) T[o + d] = static_cast<float>(y[d]);
    }
  });
  return {tokens, accepted, fallback, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("cspd_verify", &cspd_verify_cpu); }

}  // namespace specdec::cpu
