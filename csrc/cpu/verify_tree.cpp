// Fused CPU tree verification: one tree per task; the status checks (methods.h RowStatus), then recursive
// rejection over siblings level by level with the current target distribution r kept as one normalised
// float64 row. Every id is range-checked and the parents checked (parents[n] < n) before the walk, so the
// walk reads in bounds and ends, whatever the caller validated.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "verify_common.h"

namespace specdec::cpu {
namespace {

struct TreeConfig {
  int64_t method;
  const int32_t* neighbors;  // lantern: [V, k]
  int64_t k;
  LanternConfig lantern;
};

// Codes 1-5 of tree b (methods.h), before anything else is read.
inline int64_t tree_row_status(int64_t requested, int64_t m, int64_t vocab, const int64_t* tok, const int64_t* par,
                               const float* u_b, float u_sample, const TreeConfig& cfg) {
  if (requested < 1 || requested > m) return kBadCount;
  const int32_t* neighbors = cfg.method == kLantern ? cfg.neighbors : nullptr;
  int64_t status = valid_uniform(u_sample) ? kRowOk : kBadUniform;
  for (int64_t n = 0; n < requested; ++n) {
    status = first_failure(status, token_status(tok[n], vocab, u_b[n], neighbors, cfg.k));
    if (!valid_parent(n, par[n])) status = first_failure(status, kBadParent);
  }
  return status;
}

template <typename scalar_t>
void verify_tree_rows(const scalar_t* p, const scalar_t* q, const int64_t* tokens, const int64_t* parents,
                      const float* u_accept, const float* u_sample, const int64_t* num_nodes, int64_t batch,
                      int64_t m, int64_t vocab, const TreeConfig& cfg, int64_t* accepted_nodes, int64_t* accept_len,
                      int64_t* next_token) {
  const int64_t width = std::max<int64_t>(m - 1, 0);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> r(vocab), q_prime(vocab);
    std::vector<int64_t> tried;
    std::vector<double> block_ends;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n_b = num_nodes[b];
      const int64_t* par = parents + b * m;
      const int64_t* tok = tokens + b * m;
      int64_t* accepted_b = accepted_nodes + b * width;
      auto report = [&](int64_t code) {
        std::fill(accepted_b, accepted_b + width, int64_t{-1});
        accept_len[b] = 0;
        next_token[b] = -code;
      };
      const int64_t status = tree_row_status(n_b, m, vocab, tok, par, u_accept + b * m, u_sample[b], cfg);
      if (status != kRowOk) {
        report(status);
        continue;
      }
      auto p_row = [&](int64_t node) { return p + (b * m + node) * vocab; };
      // r = p[b, node]; false if the row holds an unusable value or no mass (code 6).
      auto load_p = [&](int64_t node) {
        const scalar_t* row = p_row(node);
        RawValues values;
        for (int64_t j = 0; j < vocab; ++j) {
          r[j] = static_cast<double>(static_cast<float>(row[j]));
          values.add(r[j]);
        }
        return values.ok() && values.sum > 0.0;
      };
      int64_t cur = 0, count = 0;
      bool values_ok = load_p(0);
      while (values_ok) {
        bool has_kids = false, accepted = false;
        tried.clear();
        for (int64_t c = cur + 1; c < n_b && !accepted && values_ok; ++c) {
          if (par[c] != cur) continue;
          has_kids = true;
          const int64_t t = tok[c];
          if (std::find(tried.begin(), tried.end(), t) != tried.end()) continue;
          double q_t = 1.0;
          if (q) {  // q' = q[cur] without earlier-tried tokens, renormalised (zero if nothing is left)
            const scalar_t* qr = q + (b * m + cur) * vocab;
            RawValues values;
            for (int64_t j = 0; j < vocab; ++j) {
              q_prime[j] = static_cast<double>(static_cast<float>(qr[j]));
              values.add(q_prime[j]);
            }
            if (!values.ok()) {
              values_ok = false;
              break;
            }
            for (int64_t j : tried) q_prime[j] = 0.0;
            double total = 0.0;
            for (int64_t j = 0; j < vocab; ++j) total += q_prime[j];
            for (int64_t j = 0; j < vocab; ++j) q_prime[j] = total > 0.0 ? q_prime[j] / total : 0.0;
            q_t = q_prime[t];
          }
          tried.push_back(t);
          const double u = u_accept[b * m + c];
          int64_t merged = 0;
          bool ok;
          if (cfg.method == kLantern) {
            auto rd = [&](int64_t j) { return r[j]; };
            const double p_tilde = relaxed_mass(rd, t, cfg.neighbors + t * cfg.k, cfg.k, cfg.lantern, &merged);
            ok = lantern_accepts(u, q_t, p_tilde);
          } else {
            ok = exact_accepts(u, q_t, r[t]);
          }
          if (ok) {
            accepted_b[count++] = c;
            cur = c;
            values_ok = load_p(c);
            accepted = true;
            break;
          }
          if (merged > 0) {  // r~: move the merged neighbours' mass onto t
            const int32_t* row = cfg.neighbors + t * cfg.k;
            double gained = 0.0;
            for (int64_t i = 0; i < merged; ++i) gained += r[row[i]];
            r[t] += gained;
            for (int64_t i = 0; i < merged; ++i) r[row[i]] = 0.0;
          }
          if (q) {
            for (int64_t j = 0; j < vocab; ++j) r[j] = residual_weight(r[j], q_prime[j]);
          } else {
            r[t] = 0.0;
          }
          double total = 0.0;
          for (int64_t j = 0; j < vocab; ++j) total += r[j];
          if (total > 0.0) {
            for (int64_t j = 0; j < vocab; ++j) r[j] /= total;
          } else {
            load_p(cur);  // already checked when cur was reached
          }
        }
        if (!values_ok) break;
        if (accepted) continue;
        if (!has_kids) {  // bonus from p[cur]
          const scalar_t* row = p_row(cur);
          next_token[b] = inverse_cdf(
              vocab, [&](int64_t j) { return static_cast<double>(static_cast<float>(row[j])); }, u_sample[b],
              block_ends);
        } else {  // recovered from the residual
          next_token[b] = inverse_cdf(vocab, [&](int64_t j) { return r[j]; }, u_sample[b], block_ends);
        }
        break;
      }
      if (!values_ok || next_token[b] < 0) {
        report(kBadProbability);
        continue;
      }
      accept_len[b] = count;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cpu(
    const at::Tensor& p_in, const std::optional<at::Tensor>& q_in, const at::Tensor& tokens_in,
    const at::Tensor& parents_in, const at::Tensor& u_accept_in, const at::Tensor& u_sample_in,
    const at::Tensor& num_nodes_in, int64_t method, const std::optional<at::Tensor>& neighbors_in,
    c10::ArrayRef<double> params) {
  check_tree(p_in, q_in, tokens_in, parents_in, u_accept_in, u_sample_in, num_nodes_in, method, neighbors_in, params);
  const at::Tensor p = p_in.contiguous(), tokens = tokens_in.contiguous(), parents = parents_in.contiguous(),
                   u_accept = u_accept_in.contiguous(), u_sample = u_sample_in.contiguous(),
                   num_nodes = num_nodes_in.contiguous();
  const at::Tensor q = q_in ? q_in->contiguous() : at::Tensor();
  const at::Tensor neighbors = method == kLantern ? neighbors_in->contiguous() : at::Tensor();
  const int64_t batch = p.size(0), m = p.size(1), vocab = p.size(2);
  at::Tensor accepted_nodes = at::full({batch, std::max<int64_t>(m - 1, 0)}, -1, tokens.options());
  at::Tensor accept_len = at::empty({batch}, tokens.options());
  at::Tensor next_token = at::empty({batch}, tokens.options());
  TreeConfig cfg{method, neighbors.defined() ? neighbors.data_ptr<int32_t>() : nullptr,
                 neighbors.defined() ? neighbors.size(1) : 0,
                 method == kLantern ? LanternConfig::decode(params.data()) : LanternConfig{false, 0.0}};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "verify_tree_cpu", [&] {
    verify_tree_rows<scalar_t>(p.data_ptr<scalar_t>(), q.defined() ? q.data_ptr<scalar_t>() : nullptr,
                               tokens.data_ptr<int64_t>(), parents.data_ptr<int64_t>(), u_accept.data_ptr<float>(),
                               u_sample.data_ptr<float>(), num_nodes.data_ptr<int64_t>(), batch, m, vocab, cfg,
                               accepted_nodes.data_ptr<int64_t>(), accept_len.data_ptr<int64_t>(),
                               next_token.data_ptr<int64_t>());
  });
  return {accepted_nodes, accept_len, next_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("verify_tree", &verify_tree_cpu); }

}  // namespace specdec::cpu
