// CPU logits -> verification (verify_chain_logits, verify_tree_logits): the same chain and tree walks as the
// probability ops (verify_walk.h), over LogitsRows: each logits row the walk reads is processed there (CFG,
// temperature, top-k, top-p, softmax; processed_row.h) into a thread-local float64 row; rows past the first
// rejection are never read, and no [B, L, V] probability tensor exists. Semantics:
// specdec_kernels/reference/verify_logits.py (process_logits followed by verify_chain / verify_tree). Bad rows come
// back as next_token = -code (methods.h RowStatus).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../verify_logits_checks.h"
#include "verify_walk.h"

namespace specdec::cpu {
namespace {

using logits::LogitsShape;

// The target rows of a (2B or B, S, V) logits tensor, processed on demand.
template <typename T>
LogitsRows<T> target_rows(const at::Tensor& logits, const LogitsShape& shape, const Processing& proc) {
  const T* cond = logits.data_ptr<T>();
  return LogitsRows<T>{cond, shape.cfg ? cond + shape.batch * shape.slots * shape.vocab : nullptr, shape.slots,
                       shape.vocab, proc, {}};
}

std::tuple<at::Tensor, at::Tensor> verify_chain_logits_cpu(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& draft_logits_in,
    const std::optional<at::Tensor>& draft_probs_in, const at::Tensor& draft_in, const at::Tensor& u_accept_in,
    const at::Tensor& u_sample_in, const at::Tensor& num_drafts_in, std::optional<double> cfg_scale,
    double temperature, int64_t top_k, double top_p, int64_t method, const std::optional<at::Tensor>& neighbors_in,
    const std::optional<at::Tensor>& embeddings_in, c10::ArrayRef<double> params) {
  MethodParams mp;
  const LogitsShape shape =
      logits::check_chain_logits(logits_in, draft_logits_in, draft_probs_in, draft_in, u_accept_in, u_sample_in,
                                 num_drafts_in, cfg_scale, temperature, top_k, top_p, method, params, neighbors_in,
                                 embeddings_in, &mp);
  const int64_t batch = shape.batch, drafts = shape.slots - 1, vocab = shape.vocab;
  const at::Tensor logits = logits_in.contiguous(), draft = draft_in.contiguous(),
                   u_accept = u_accept_in.contiguous(), u_sample = u_sample_in.contiguous(),
                   num_drafts = num_drafts_in.contiguous();
  const at::Tensor draft_logits = draft_logits_in ? draft_logits_in->contiguous() : at::Tensor();
  const at::Tensor draft_probs = draft_probs_in ? draft_probs_in->to(at::kFloat).contiguous() : at::Tensor();
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, embeddings_in);
  at::Tensor accept_len = at::empty({batch}, draft.options());
  at::Tensor next_token = at::empty({batch}, draft.options());
  const Processing proc = make_processing(cfg_scale, temperature, top_k, top_p);
  const int64_t grain = row_grain(vocab);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "verify_chain_logits_cpu", [&] {
    const LogitsRows<scalar_t> p = target_rows<scalar_t>(logits, shape, proc);
    if (draft_logits.defined()) {  // the draft's rows get the same processing (CFG only for a doubled batch)
      const scalar_t* cond = draft_logits.data_ptr<scalar_t>();
      const LogitsRows<scalar_t> q{cond, shape.draft_cfg ? cond + batch * drafts * vocab : nullptr, drafts, vocab,
                                   proc, {}};
      chain_rows(p, std::optional(q), draft, u_accept, u_sample, num_drafts, mp, vocab, grain, accept_len,
                 next_token);
    } else if (draft_probs.defined()) {
      const TensorRows<float> q{draft_probs.data_ptr<float>(), drafts, vocab};
      chain_rows(p, std::optional(q), draft, u_accept, u_sample, num_drafts, mp, vocab, grain, accept_len,
                 next_token);
    } else {
      chain_rows(p, std::optional<TensorRows<float>>(), draft, u_accept, u_sample, num_drafts, mp, vocab, grain,
                 accept_len, next_token);
    }
  });
  return {accept_len, next_token};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_logits_cpu(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& draft_probs_in, const at::Tensor& tokens_in,
    const at::Tensor& parents_in, const at::Tensor& u_accept_in, const at::Tensor& u_sample_in,
    const at::Tensor& num_nodes_in, std::optional<double> cfg_scale, double temperature, int64_t top_k, double top_p,
    int64_t method, const std::optional<at::Tensor>& neighbors_in, c10::ArrayRef<double> params) {
  MethodParams mp;
  const LogitsShape shape = logits::check_tree_logits(logits_in, draft_probs_in, tokens_in, parents_in, u_accept_in,
                                                      u_sample_in, num_nodes_in, cfg_scale, temperature, top_k,
                                                      top_p, method, params, neighbors_in, &mp);
  const int64_t batch = shape.batch, m = shape.slots, vocab = shape.vocab;
  const at::Tensor logits = logits_in.contiguous(), tokens = tokens_in.contiguous(),
                   parents = parents_in.contiguous(), u_accept = u_accept_in.contiguous(),
                   u_sample = u_sample_in.contiguous(), num_nodes = num_nodes_in.contiguous();
  const at::Tensor draft_probs = draft_probs_in ? draft_probs_in->to(at::kFloat).contiguous() : at::Tensor();
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, std::nullopt);
  at::Tensor accepted_nodes = at::full({batch, std::max<int64_t>(m - 1, 0)}, -1, tokens.options());
  at::Tensor accept_len = at::empty({batch}, tokens.options());
  at::Tensor next_token = at::empty({batch}, tokens.options());
  const Processing proc = make_processing(cfg_scale, temperature, top_k, top_p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "verify_tree_logits_cpu", [&] {
    const std::optional<TensorRows<float>> q =
        draft_probs.defined() ? std::optional(TensorRows<float>{draft_probs.data_ptr<float>(), m, vocab}) : std::nullopt;
    tree_rows(target_rows<scalar_t>(logits, shape, proc), q, tokens, parents, u_accept, u_sample, num_nodes, mp,
              row_grain(vocab), accepted_nodes, accept_len, next_token);
  });
  return {accepted_nodes, accept_len, next_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) {
  m.impl("verify_chain_logits", &verify_chain_logits_cpu);
  m.impl("verify_tree_logits", &verify_tree_logits_cpu);
}

}  // namespace specdec::cpu
