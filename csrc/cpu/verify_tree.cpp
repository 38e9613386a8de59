// CPU tree verification over probability tensors: the one tree walk (verify_walk.h) over TensorRows, one tree per
// task. Every id is range-checked and the parents checked (parents[n] < n) before the walk, so the walk reads in
// bounds and ends, whatever the caller validated.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "verify_walk.h"

namespace specdec::cpu {
namespace {

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
  const int64_t batch = p.size(0), m = p.size(1), vocab = p.size(2);
  MethodParams mp = logits::decode_params(method, params, /*chain=*/false, vocab);
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, std::nullopt);
  at::Tensor accepted_nodes = at::full({batch, std::max<int64_t>(m - 1, 0)}, -1, tokens.options());
  at::Tensor accept_len = at::empty({batch}, tokens.options());
  at::Tensor next_token = at::empty({batch}, tokens.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "verify_tree_cpu", [&] {
    using Rows = TensorRows<scalar_t>;
    tree_rows(Rows{p.data_ptr<scalar_t>(), m, vocab},
              q.defined() ? std::optional<Rows>(Rows{q.data_ptr<scalar_t>(), m, vocab}) : std::nullopt,
              tokens, parents, u_accept, u_sample, num_nodes, mp, /*grain=*/1, accepted_nodes, accept_len,
              next_token);
  });
  return {accepted_nodes, accept_len, next_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("verify_tree", &verify_tree_cpu); }

}  // namespace specdec::cpu
