// Fused CPU tree verification: one tree per task; recursive rejection over siblings level by level
// with the current target distribution r kept as one normalised float64 row.
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

struct TreeParams {
  int64_t method;
  const int32_t* neighbors;
  int64_t k;
  bool use_lambda;
  double budget;
};

template <typename scalar_t>
void verify_tree_rows(const scalar_t* p, const scalar_t* q, const int64_t* tokens, const int64_t* parents,
                      const float* u_accept, const float* u_sample, const int64_t* num_nodes, int64_t batch,
                      int64_t m, int64_t vocab, const TreeParams& cfg, int64_t* accepted_nodes, int64_t* accept_len,
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
      auto p_row = [&](int64_t node) { return p + (b * m + node) * vocab; };
      auto load_p = [&](int64_t node) {
        const scalar_t* row = p_row(node);
        for (int64_t j = 0; j < vocab; ++j) r[j] = static_cast<double>(static_cast<float>(row[j]));
      };
      int64_t cur = 0, count = 0;
      load_p(0);
      while (true) {
        bool has_kids = false, accepted = false;
        tried.clear();
        for (int64_t c = cur + 1; c < n_b && !accepted; ++c) {
          if (par[c] != cur) continue;
          has_kids = true;
          const int64_t t = tok[c];
          if (std::find(tried.begin(), tried.end(), t) != tried.end()) continue;
          double q_t = 1.0;
          if (q) {  // q' = q[cur] without earlier-tried tokens, renormalised (zero if nothing is left)
            const scalar_t* qr = q + (b * m + cur) * vocab;
            for (int64_t j = 0; j < vocab; ++j) q_prime[j] = static_cast<double>(static_cast<float>(qr[j]));
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
            const double p_tilde =
                relaxed_mass(rd, t, cfg.neighbors + t * cfg.k, cfg.k, cfg.use_lambda, cfg.budget, merged);
            ok = p_tilde > 0.0 && u * q_t <= p_tilde;
          } else {
            ok = u * q_t < r[t];
          }
          if (ok) {
            accepted_nodes[b * width + count++] = c;
            cur = c;
            load_p(c);
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
            for (int64_t j = 0; j < vocab; ++j) r[j] = std::max(0.0, r[j] - q_prime[j]);
          } else {
            r[t] = 0.0;
          }
          double total = 0.0;
          for (int64_t j = 0; j < vocab; ++j) total += r[j];
          if (total > 0.0) {
            for (int64_t j = 0; j < vocab; ++j) r[j] /= total;
          } else {
            load_p(cur);
          }
        }
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
      accept_len[b] = count;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cpu(
    const at::Tensor& p_in, const std::optional<at::Tensor>& q_in, const at::Tensor& tokens_in,
    const at::Tensor& parents_in, const at::Tensor& u_accept_in, const at::Tensor& u_sample_in,
    const at::Tensor& num_nodes_in, int64_t method, const std::optional<at::Tensor>& neighbors_in,
    std::optional<double> delta, std::optional<double> lam) {
  check_tree(p_in, q_in, tokens_in, parents_in, u_accept_in, u_sample_in, num_nodes_in, method, neighbors_in, delta,
             lam);
  const at::Tensor p = p_in.contiguous(), tokens = tokens_in.contiguous(), parents = parents_in.contiguous(),
                   u_accept = u_accept_in.contiguous(), u_sample = u_sample_in.contiguous(),
                   num_nodes = num_nodes_in.contiguous();
  const at::Tensor q = q_in ? q_in->contiguous() : at::Tensor();
  const at::Tensor neighbors = method == kLantern ? neighbors_in->contiguous() : at::Tensor();
  const int64_t batch = p.size(0), m = p.size(1), vocab = p.size(2);
  at::Tensor accepted_nodes = at::full({batch, std::max<int64_t>(m - 1, 0)}, -1, tokens.options());
  at::Tensor accept_len = at::empty({batch}, tokens.options());
  at::Tensor next_token = at::empty({batch}, tokens.options());
  TreeParams cfg{method, neighbors.defined() ? neighbors.data_ptr<int32_t>() : nullptr,
                 neighbors.defined() ? neighbors.size(1) : 0, lam.has_value(),
                 lam.has_value() ? *lam : delta.value_or(0.0)};
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
