// CPU GSD group masses (P_G, Q_G), one draft row at a time in parallel. A bad row is reported as
// group_p = -code, group_q = NaN (methods.h): a draft outside [0, V) (code 2, not dereferenced), or a
// NaN / inf / negative value read (code 6: the ranked row p, q of the group members) or a NaN / inf
// embedding row whose distance is computed.
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

std::tuple<at::Tensor, at::Tensor> gsd_group_mass_cpu(const at::Tensor& p_in, const std::optional<at::Tensor>& q_in,
                                                      const at::Tensor& x_in,
                                                      const std::optional<at::Tensor>& embeddings_in, int64_t h_lo,
                                                      int64_t h_hi, double p_thr, double d_thr) {
  check_group_mass(p_in, q_in, x_in, embeddings_in, h_lo, h_hi);
  const int64_t rows = p_in.size(0), vocab = p_in.size(1);
  const at::Tensor p = p_in.contiguous(), x = x_in.contiguous();
  const at::Tensor q = q_in ? q_in->contiguous() : at::Tensor();
  const at::Tensor emb = embeddings_in ? embeddings_in->contiguous() : at::Tensor();
  const GsdConfig cfg = GsdConfig::make(h_lo, h_hi, p_thr, d_thr, vocab);
  at::Tensor group_p = at::empty({rows}, p.options().dtype(at::kFloat));
  at::Tensor group_q = at::empty({rows}, p.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "gsd_group_mass_cpu", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    const scalar_t* qp = q.defined() ? q.data_ptr<scalar_t>() : nullptr;
    const int64_t* xp = x.data_ptr<int64_t>();
    const float* ep = emb.defined() ? emb.data_ptr<float>() : nullptr;
    const int64_t emb_dim = emb.defined() ? emb.size(1) : 0;
    float* out_p = group_p.data_ptr<float>();
    float* out_q = group_q.data_ptr<float>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> above, below;
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* p_row = pp + r * vocab;
        const scalar_t* q_row = qp ? qp + r * vocab : nullptr;
        auto pr = [&](int64_t j) { return static_cast<float>(p_row[j]); };
        auto qr = [&](int64_t j) { return static_cast<float>(q_row[j]); };
        if (!valid_id(xp[r], vocab)) {
          out_p[r] = static_cast<float>(-kBadId);
          out_q[r] = std::numeric_limits<float>::quiet_NaN();
          continue;
        }
        const GroupMass g = group_mass(pr, q_row ? &qr : static_cast<decltype(qr)*>(nullptr), vocab, xp[r], cfg, ep,
                                       emb_dim, above, below);
        const bool ok = g.values_ok && g.embeddings_ok;
        out_p[r] = ok ? static_cast<float>(g.p) : static_cast<float>(-kBadProbability);
        out_q[r] = ok ? static_cast<float>(g.q) : std::numeric_limits<float>::quiet_NaN();
      }
    });
  });
  return {group_p, group_q};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("gsd_group_mass", &gsd_group_mass_cpu); }

}  // namespace specdec::cpu
