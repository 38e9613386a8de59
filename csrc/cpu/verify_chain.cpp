// Fused CPU chain verification: per row, the status checks (methods.h RowStatus), the acceptance tests up
// to the first rejection, the accept prefix, and the residual (or bonus) inverse-CDF sample, in one pass;
// rows run in parallel and no [B, L, V] temporary is materialised (one float64 row buffer per rejected
// row, only when LANTERN merged neighbours). Every id is range-checked before it is dereferenced,
// whatever the caller validated.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"
#include "verify_common.h"

namespace specdec::cpu {
namespace {

struct ChainConfig {
  int64_t method;
  const int32_t* neighbors;  // lantern: [V, k]
  int64_t k;
  LanternConfig lantern;
  GsdConfig gsd;
  const float* embeddings;  // gsd: [V, emb_dim] or nullptr
  int64_t emb_dim;
  const double* params;  // the packed method parameters (methods.h), decoded where a method uses them
};

// Codes 1, 2, 4, 5 of row b (methods.h), before anything else is read.
inline int64_t chain_row_status(int64_t requested, int64_t drafts, int64_t vocab, const int64_t* draft_b,
                                const float* u_b, float u_sample, const ChainConfig& cfg) {
  if (requested < 0 || requested > drafts) return kBadCount;
  int64_t status = valid_uniform(u_sample) ? kRowOk : kBadUniform;
  const int32_t* neighbors = cfg.method == kLantern ? cfg.neighbors : nullptr;
  for (int64_t i = 0; i < requested; ++i)
    status = first_failure(status, token_status(draft_b[i], vocab, u_b[i], neighbors, cfg.k));
  return status;
}

template <typename scalar_t>
void verify_chain_rows(const scalar_t* p, const scalar_t* q, const int64_t* draft, const float* u_accept,
                       const float* u_sample, const int64_t* num_drafts, int64_t batch, int64_t drafts,
                       int64_t vocab, const ChainConfig& cfg, int64_t* accept_len, int64_t* next_token) {
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> above, below;
    std::vector<double> residual, block_ends;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = num_drafts[b];
      const int64_t* draft_b = draft + b * drafts;
      const float* u_b = u_accept + b * drafts;
      auto report = [&](int64_t code) {
        accept_len[b] = 0;
        next_token[b] = -code;
      };
      const int64_t status = chain_row_status(n, drafts, vocab, draft_b, u_b, u_sample[b], cfg);
      if (status != kRowOk) {
        report(status);
        continue;
      }
      // ---- the accept prefix: tests in order up to the first rejection (tested values must be usable)
      int64_t a = 0;
      int64_t merged = 0;
      bool values_ok = true;
      for (; a < n; ++a) {
        const scalar_t* p_row = p + (b * (drafts + 1) + a) * vocab;
        const scalar_t* q_row = q ? q + (b * drafts + a) * vocab : nullptr;
        const int64_t x = draft_b[a];
        const double u = u_b[a];
        const double px = static_cast<float>(p_row[x]);
        const double qx = q_row ? static_cast<double>(static_cast<float>(q_row[x])) : 1.0;
        if (!valid_probability(px) || !valid_probability(qx)) {
          values_ok = false;
          break;
        }
        auto pr = [&](int64_t j) { return static_cast<float>(p_row[j]); };
        bool pass;
        if (cfg.method == kExact) {
          pass = exact_accepts(u, qx, px);
        } else if (cfg.method == kGsd) {
          auto qr = [&](int64_t j) { return static_cast<float>(q_row[j]); };
          const GroupMass g = group_mass(pr, q_row ? &qr : static_cast<decltype(qr)*>(nullptr), vocab, x, cfg.gsd,
                                         cfg.embeddings, cfg.emb_dim, above, below);
          if (!g.values_ok) {
            values_ok = false;
            break;
          }
          pass = group_accepts(u, g.q, g.p);
        } else if (cfg.method == kTypical) {  // the entropy of the whole row p[b, a], which is thus read
          double entropy = 0.0;
          uint32_t bad = 0;
          for (int64_t j = 0; j < vocab; ++j) {
            const float pj = static_cast<float>(p_row[j]);
            bad |= unusable_probability(pj);
            entropy += entropy_term(pj);
          }
          if (bad != 0) {
            values_ok = false;
            break;
          }
          pass = typical_accepts(px, entropy, TypicalConfig::decode(cfg.params));
        } else {
          auto pd = [&](int64_t j) { return static_cast<double>(static_cast<float>(p_row[j])); };
          const double p_tilde = relaxed_mass(pd, x, cfg.neighbors + x * cfg.k, cfg.k, cfg.lantern, &merged);
          pass = lantern_accepts(u, qx, p_tilde);
        }
        if (!pass) break;
      }
      if (!values_ok) {
        report(kBadProbability);
        continue;
      }
      // ---- the sample: residual at a (a < n) or the bonus row p[b, n]; the whole rows read are checked
      const scalar_t* target = p + (b * (drafts + 1) + a) * vocab;
      auto target_w = [&](int64_t j) { return static_cast<double>(static_cast<float>(target[j])); };
      auto target_bad = [&](int64_t j) { return unusable_probability(static_cast<float>(target[j])); };
      bool unusable = false;
      int64_t token = -1;
      // recovered: max(0, p~_x - q), p~_x = p with LANTERN's merged mass moved onto x (typical: p[b, a] itself)
      if (a < n && cfg.method != kTypical) {
        const int64_t x = draft_b[a];
        const scalar_t* q_row = q ? q + (b * drafts + a) * vocab : nullptr;
        if (merged == 0) {  // weights on the fly: no row buffer
          if (q_row) {
            auto w = [&](int64_t j) {
              return residual_weight(target_w(j), static_cast<double>(static_cast<float>(q_row[j])));
            };
            auto bad = [&](int64_t j) {
              return unusable_probability(static_cast<float>(target[j])) |
                     unusable_probability(static_cast<float>(q_row[j]));
            };
            token = inverse_cdf(vocab, w, bad, u_sample[b], block_ends, unusable);
          } else {  // one-hot q: the weights are p itself except at x, whose p(x) was tested already
            auto w = [&](int64_t j) { return j == x ? residual_weight(target_w(j), 1.0) : target_w(j); };
            token = inverse_cdf_raw(vocab, w, u_sample[b], block_ends, unusable);
          }
        } else {  // LANTERN moved A's mass onto x: materialise the one row
          residual.resize(vocab);
          const int32_t* moved = cfg.neighbors + x * cfg.k;
          double moved_onto_x = 0.0;
          for (int64_t m = 0; m < merged; ++m) moved_onto_x += target_w(moved[m]);
          uint32_t bad = 0;
          for (int64_t j = 0; j < vocab; ++j) {
            residual[j] = target_w(j);
            bad |= target_bad(j) | (q_row ? unusable_probability(static_cast<float>(q_row[j])) : 0u);
          }
          unusable = bad != 0;
          for (int64_t m = 0; m < merged; ++m) residual[moved[m]] = 0.0;
          residual[x] += moved_onto_x;
          for (int64_t j = 0; j < vocab; ++j) {
            const double qj = q_row ? static_cast<double>(static_cast<float>(q_row[j])) : (j == x ? 1.0 : 0.0);
            residual[j] = residual_weight(residual[j], qj);
          }
          token = inverse_cdf(vocab, [&](int64_t j) { return residual[j]; }, u_sample[b], block_ends);
        }
        if (!unusable && token < 0) token = inverse_cdf(vocab, target_w, u_sample[b], block_ends);  // p[b, a]
      } else {
        token = inverse_cdf_raw(vocab, target_w, u_sample[b], block_ends, unusable);  // bonus (typical: also recovered)
      }
      if (unusable || token < 0) {  // a NaN / inf / negative entry, or a row without mass
        report(kBadProbability);
        continue;
      }
      next_token[b] = token;
      accept_len[b] = a;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> verify_chain_cpu(const at::Tensor& p_in, const std::optional<at::Tensor>& q_in,
                                                    const at::Tensor& draft_in, const at::Tensor& u_accept_in,
                                                    const at::Tensor& u_sample_in, const at::Tensor& num_drafts_in,
                                                    int64_t method, const std::optional<at::Tensor>& neighbors_in,
                                                    const std::optional<at::Tensor>& embeddings_in,
                                                    c10::ArrayRef<double> params) {
  check_chain(p_in, q_in, draft_in, u_accept_in, u_sample_in, num_drafts_in, method, neighbors_in, embeddings_in,
              params);
  const at::Tensor p = p_in.contiguous(), draft = draft_in.contiguous(), u_accept = u_accept_in.contiguous(),
                   u_sample = u_sample_in.contiguous(), num_drafts = num_drafts_in.contiguous();
  const at::Tensor q = q_in ? q_in->contiguous() : at::Tensor();
  const at::Tensor neighbors = (method == kLantern) ? neighbors_in->contiguous() : at::Tensor();
  const at::Tensor embeddings = (method == kGsd && embeddings_in) ? embeddings_in->contiguous() : at::Tensor();
  const int64_t batch = p.size(0), drafts = p.size(1) - 1, vocab = p.size(2);
  at::Tensor accept_len = at::empty({batch}, draft.options());
  at::Tensor next_token = at::empty({batch}, draft.options());
  ChainConfig cfg{method,
                  neighbors.defined() ? neighbors.data_ptr<int32_t>() : nullptr,
                  neighbors.defined() ? neighbors.size(1) : 0,
                  method == kLantern ? LanternConfig::decode(params.data()) : LanternConfig{false, 0.0},
                  method == kGsd ? GsdConfig::decode(params.data(), vocab) : GsdConfig{0, 0, 0.0f, 0.0f},
                  embeddings.defined() ? embeddings.data_ptr<float>() : nullptr,
                  embeddings.defined() ? embeddings.size(1) : 0,
                  params.data()};
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
