// Fused CPU chain verification: per row, the acceptance tests up to the first rejection, the accept
// prefix, and the residual (or bonus) inverse-CDF sample, in one pass; rows run in parallel and no
// [B, L, V] temporary is materialised (one float64 row buffer per rejected row).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"
#include "verify_common.h"

namespace specdec::cpu {
namespace {

struct ChainParams {
  int64_t method;
  const int32_t* neighbors;
  int64_t k;
  bool use_lambda;
  double budget;
  const float* embeddings;
  int64_t emb_dim;
  int64_t h_lo, h_hi;
  float p_thr, d_thr;
};

template <typename scalar_t>
void verify_chain_rows(const scalar_t* p, const scalar_t* q, const int64_t* draft, const float* u_accept,
                       const float* u_sample, const int64_t* num_drafts, int64_t batch, int64_t drafts,
                       int64_t vocab, const ChainParams& cfg, int64_t* accept_len, int64_t* next_token) {
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> above, below;
    std::vector<double> residual, block_ends;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = num_drafts[b];
      int64_t a = 0;
      int64_t merged = 0;
      for (; a < n; ++a) {
        const scalar_t* p_row = p + (b * (drafts + 1) + a) * vocab;
        const scalar_t* q_row = q ? q + (b * drafts + a) * vocab : nullptr;
        const int64_t x = draft[b * drafts + a];
        const double u = u_accept[b * drafts + a];
        const double qx = q_row ? static_cast<double>(static_cast<float>(q_row[x])) : 1.0;
        auto pr = [&](int64_t j) { return static_cast<float>(p_row[j]); };
        bool pass;
        if (cfg.method == kExact) {
          pass = u * qx < static_cast<double>(pr(x));
        } else if (cfg.method == kGsd) {
          auto qr = [&](int64_t j) { return static_cast<float>(q_row[j]); };
          const GroupMass g = group_mass(pr, q_row ? &qr : static_cast<decltype(qr)*>(nullptr), vocab, x, cfg.h_lo,
                                         cfg.h_hi, cfg.p_thr, cfg.d_thr, cfg.embeddings, cfg.emb_dim, above, below);
          pass = u * g.q < g.p;
        } else {
          auto pd = [&](int64_t j) { return static_cast<double>(static_cast<float>(p_row[j])); };
          const double p_tilde =
              relaxed_mass(pd, x, cfg.neighbors + x * cfg.k, cfg.k, cfg.use_lambda, cfg.budget, merged);
          pass = p_tilde > 0.0 && u * qx <= p_tilde;
        }
        if (!pass) break;
      }
      const scalar_t* target = p + (b * (drafts + 1) + a) * vocab;
      auto target_w = [&](int64_t j) { return static_cast<double>(static_cast<float>(target[j])); };
      int64_t token = -1;
      if (a < n) {  // recovered: max(0, p~_x - q), p~_x = p with LANTERN's merged mass moved onto x
        const int64_t x = draft[b * drafts + a];
        const scalar_t* q_row = q ? q + (b * drafts + a) * vocab : nullptr;
        if (merged == 0) {  // weights on the fly: no row buffer
          if (q_row) {
            auto w = [&](int64_t j) {
              return std::max(0.0, target_w(j) - static_cast<double>(static_cast<float>(q_row[j])));
            };
            token = inverse_cdf(vocab, w, u_sample[b], block_ends);
          } else {
            auto w = [&](int64_t j) { return j == x ? std::max(0.0, target_w(j) - 1.0) : target_w(j); };
            token = inverse_cdf(vocab, w, u_sample[b], block_ends);
          }
        } else {  // LANTERN moved A's mass onto x: materialise the one row
          residual.resize(vocab);
          const int32_t* moved = cfg.neighbors + x * cfg.k;
          double moved_onto_x = 0.0;
          for (int64_t m = 0; m < merged; ++m) moved_onto_x += target_w(moved[m]);
          for (int64_t j = 0; j < vocab; ++j) residual[j] = target_w(j);
          for (int64_t m = 0; m < merged; ++m) residual[moved[m]] = 0.0;
          residual[x] += moved_onto_x;
          for (int64_t j = 0; j < vocab; ++j) {
            const double qj = q_row ? static_cast<double>(static_cast<float>(q_row[j])) : (j == x ? 1.0 : 0.0);
            residual[j] = std::max(0.0, residual[j] - qj);
          }
          token = inverse_cdf(vocab, [&](int64_t j) { return residual[j]; }, u_sample[b], block_ends);
        }
      }
      if (token < 0) token = inverse_cdf(vocab, target_w, u_sample[b], block_ends);  // bonus, or zero residual
      next_token[b] = token;
      accept_len[b] = a;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> verify_chain_cpu(const at::Tensor& p_in, const std::optional<at::Tensor>& q_in,
                                                    const at::Tensor& draft_in, const at::Tensor& u_accept_in,
                                                    const at::Tensor& u_sample_in, const at::Tensor& num_drafts_in,
                                                    int64_t method, const std::optional<at::Tensor>& neighbors_in,
                                                    std::optional<double> delta, std::optional<double> lam,
                                                    const std::optional<at::Tensor>& embeddings_in, int64_t h_lo,
                                                    int64_t h_hi, double p_thr, double d_thr) {
  check_chain(p_in, q_in, draft_in, u_accept_in, u_sample_in, num_drafts_in, method, neighbors_in, delta, lam,
              embeddings_in);
  const at::Tensor p = p_in.contiguous(), draft = draft_in.contiguous(), u_accept = u_accept_in.contiguous(),
                   u_sample = u_sample_in.contiguous(), num_drafts = num_drafts_in.contiguous();
  const at::Tensor q = q_in ? q_in->contiguous() : at::Tensor();
  const at::Tensor neighbors = (method == kLantern) ? neighbors_in->contiguous() : at::Tensor();
  const at::Tensor embeddings = (method == kGsd && embeddings_in) ? embeddings_in->contiguous() : at::Tensor();
  const int64_t batch = p.size(0), drafts = p.size(1) - 1, vocab = p.size(2);
  at::Tensor accept_len = at::empty({batch}, draft.options());
  at::Tensor next_token = at::empty({batch}, draft.options());
  ChainParams cfg{method,
                  neighbors.defined() ? neighbors.data_ptr<int32_t>() : nullptr,
                  neighbors.defined() ? neighbors.size(1) : 0,
                  lam.has_value(),
                  lam.has_value() ? *lam : delta.value_or(0.0),
                  embeddings.defined() ? embeddings.data_ptr<float>() : nullptr,
                  embeddings.defined() ? embeddings.size(1) : 0,
                  h_lo,
                  h_hi,
                  static_cast<float>(p_thr),
                  static_cast<float>(d_thr)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "verify_chain_cpu", [&] {
    verify_chain_rows<scalar_t>(p.data_ptr<scalar_t>(), q.defined() ? q.data_ptr<scalar_t>() : nullptr,
                                draft.data_ptr<int64_t>(), u_accept.data_ptr<float>(), u_sample.data_ptr<float>(),
                                num_drafts.data_ptr<int64_t>(), batch, drafts, vocab, cfg,
                                accept_len.data_ptr<int64_t>(), next_token.data_ptr<int64_t>());
  });
  return {accept_len, next_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("verify_chain", &verify_chain_cpu); }

}  // namespace specdec::cpu
