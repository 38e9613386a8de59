// CPU LANTERN / LANTERN++ relaxed mass, one candidate row at a time in parallel. A candidate outside
// [0, V) or a bad neighbour row is not dereferenced, and a NaN / inf / negative p among the entries the
// scan reads is reported: p_tilde = NaN and merged = -code (methods.h codes 2, 4, 6).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"
#include <limits>

#include "verify_common.h"

namespace specdec::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> lantern_relaxed_mass_cpu(const at::Tensor& p_in, const at::Tensor& x_in,
                                                            const at::Tensor& neighbors_in,
                                                            std::optional<double> delta, std::optional<double> lam) {
  check_relaxed_mass(p_in, x_in, neighbors_in, delta, lam);
  const at::Tensor p = p_in.contiguous(), x = x_in.contiguous(), neighbors = neighbors_in.contiguous();
  const int64_t rows = p.size(0), vocab = p.size(1), k = neighbors.size(1);
  at::Tensor p_tilde = at::empty({rows}, p.options().dtype(at::kFloat));
  at::Tensor merged = at::empty({rows}, x.options().dtype(at::kInt));
  const LanternConfig cfg{lam.has_value(), lam.has_value() ? *lam : *delta};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "lantern_relaxed_mass_cpu", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    const int64_t* xp = x.data_ptr<int64_t>();
    const int32_t* nb = neighbors.data_ptr<int32_t>();
    float* out = p_tilde.data_ptr<float>();
    int32_t* out_m = merged.data_ptr<int32_t>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = pp + r * vocab;
        const int64_t x = xp[r];
        const int64_t status = token_status(x, vocab, 0.0f, nb, k);
        if (status != kRowOk) {
          out[r] = std::numeric_limits<float>::quiet_NaN();
          out_m[r] = static_cast<int32_t>(-status);
          continue;
        }
        auto rd = [&](int64_t j) { return static_cast<double>(static_cast<float>(row[j])); };
        int64_t m = 0;
        const double pt = relaxed_mass(rd, x, nb + x * k, k, cfg, &m);
        const int64_t values = relaxed_mass_status(rd, x, nb + x * k, k, m);
        out[r] = values == kRowOk ? static_cast<float>(pt) : std::numeric_limits<float>::quiet_NaN();
        out_m[r] = static_cast<int32_t>(values == kRowOk ? m : -values);
      }
    });
  });
  return {p_tilde, merged};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("lantern_relaxed_mass", &lantern_relaxed_mass_cpu); }

}  // namespace specdec::cpu
