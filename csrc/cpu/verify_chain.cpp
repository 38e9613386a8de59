// CPU chain verification over probability tensors: the one chain walk (verify_walk.h) over TensorRows, rows in
// parallel; no [B, L, V] temporary (one float64 row buffer per rejected row, only when a relaxed residual merged
// neighbours). Every id is range-checked before it is dereferenced, whatever the caller validated.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"
#include "verify_walk.h"

namespace specdec::cpu {
namespace {

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
  const int64_t batch = p.size(0), drafts = p.size(1) - 1, vocab = p.size(2);
  MethodParams mp = logits::decode_params(method, params, /*chain=*/true, vocab);
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, embeddings_in);
  at::Tensor accept_len = at::empty({batch}, draft.options());
  at::Tensor next_token = at::empty({batch}, draft.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "verify_chain_cpu", [&] {
    using Rows = TensorRows<scalar_t>;
    chain_rows(Rows{p.data_ptr<scalar_t>(), drafts + 1, vocab},
               q.defined() ? std::optional<Rows>(Rows{q.data_ptr<scalar_t>(), drafts, vocab}) : std::nullopt, draft,
               u_accept, u_sample, num_drafts, mp, vocab, /*grain=*/1, accept_len, next_token);
  });
  return {accept_len, next_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("verify_chain", &verify_chain_cpu); }

}  // namespace specdec::cpu
