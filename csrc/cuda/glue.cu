// CUDA backend of specdec_kernels: structural checks from csrc/checks.h (and the rule parameters decoded once by
// csrc/verify_logits_checks.h), the device guard and the current stream, then the torch-free launchers of
// csrc/cuda/*.cuh, whose status is checked with an error naming the kernel. Registered under the CUDA dispatch key;
// the schemas live in csrc/ops.cpp.
// Includes are deliberately minimal (docs/BUILD.md §4): never ATen/cuda/CUDAContext.h, which needs
// cuBLAS / cuSPARSE headers that the CI toolkit lacks.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "../checks.h"
#include "../verify_logits_checks.h"
#include "build_tree.cuh"
#include "cspd_verify.cuh"
#include "glue_common.h"
#include "gsd_group_mass.cuh"
#include "jacobi_step_glue.h"
#include "lantern_relaxed_mass.cuh"
#include "neighbor_table.cuh"
#include "verify_chain.cuh"
#include "verify_logits_glue.h"
#include "verify_tree.cuh"

namespace specdec::gpu {
namespace {

using glue::check_status;
using glue::contiguous_or_undefined;
using glue::dispatch_prob;
using glue::ptr;
using glue::stream_of;
using glue::to_int;

std::tuple<at::Tensor, at::Tensor> verify_chain_cuda(const at::Tensor& p_in, const std::optional<at::Tensor>& q_in,
                                                     const at::Tensor& draft_in, const at::Tensor& u_accept_in,
                                                     const at::Tensor& u_sample_in, const at::Tensor& num_drafts_in,
                                                     int64_t method, const std::optional<at::Tensor>& neighbors_in,
                                                     const std::optional<at::Tensor>& embeddings_in,
                                                     c10::ArrayRef<double> params) {
  check_chain(p_in, q_in, draft_in, u_accept_in, u_sample_in, num_drafts_in, method, neighbors_in, embeddings_in,
              params);
  const c10::cuda::CUDAGuard guard(p_in.device());
  const at::Tensor p = p_in.contiguous(), draft = draft_in.contiguous(), u_accept = u_accept_in.contiguous(),
                   u_sample = u_sample_in.contiguous(), num_drafts = num_drafts_in.contiguous();
  const at::Tensor q = contiguous_or_undefined(q_in);
  const int64_t batch = p.size(0);
  const int drafts = to_int(p.size(1) - 1, "num_draft_tokens"), vocab = to_int(p.size(2), "vocab");
  to_int(batch, "batch");
  logits::MethodParams mp = logits::decode_params(method, params, /*chain=*/true, vocab);
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, embeddings_in);
  const ChainParams cfg{batch, drafts, vocab, glue::rule_params(mp)};
  at::Tensor gsd_flags = glue::chain_workspace(mp.method, batch, drafts, p);
  at::Tensor accept_len = at::empty({batch}, draft.options());
  at::Tensor next_token = at::empty({batch}, draft.options());
  const cudaStream_t stream = stream_of(p);
  dispatch_prob(p.scalar_type(), "verify_chain", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const TensorRows<T> p_rows{ptr<T>(p), drafts + 1, vocab};
    const TensorRows<T> q_rows{ptr<T>(q), drafts, vocab};
    check_status(VerifyChain(p_rows, q_rows, ptr<int64_t>(draft), ptr<float>(u_accept), ptr<float>(u_sample),
                             ptr<int64_t>(num_drafts), cfg, glue::data_or_null(gsd_flags),
                             accept_len.data_ptr<int64_t>(), next_token.data_ptr<int64_t>(), stream),
                 "VerifyChainKernel (verify_chain)");
  });
  return {accept_len, next_token};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cuda(
    const at::Tensor& p_in, const std::optional<at::Tensor>& q_in, const at::Tensor& tokens_in,
    const at::Tensor& parents_in, const at::Tensor& u_accept_in, const at::Tensor& u_sample_in,
    const at::Tensor& num_nodes_in, int64_t method, const std::optional<at::Tensor>& neighbors_in,
    c10::ArrayRef<double> params) {
  check_tree(p_in, q_in, tokens_in, parents_in, u_accept_in, u_sample_in, num_nodes_in, method, neighbors_in, params);
  const c10::cuda::CUDAGuard guard(p_in.device());
  const at::Tensor p = p_in.contiguous(), tokens = tokens_in.contiguous(), parents = parents_in.contiguous(),
                   u_accept = u_accept_in.contiguous(), u_sample = u_sample_in.contiguous(),
                   num_nodes = num_nodes_in.contiguous();
  const at::Tensor q = contiguous_or_undefined(q_in);
  const int64_t batch = p.size(0);
  const int nodes = to_int(p.size(1), "num_nodes"), vocab = to_int(p.size(2), "vocab");
  to_int(batch, "batch");
  logits::MethodParams mp = logits::decode_params(method, params, /*chain=*/false, vocab);
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, std::nullopt);
  const TreeParams cfg{batch, nodes, vocab, glue::rule_params(mp)};
  at::Tensor accepted_nodes = at::empty({batch, std::max<int64_t>(nodes - 1, 0)}, tokens.options());
  at::Tensor accept_len = at::empty({batch}, tokens.options());
  at::Tensor next_token = at::empty({batch}, tokens.options());
  // r, the current target row of each tree, in float64 (never materialised per node).
  at::Tensor r_scratch = at::empty({batch, static_cast<int64_t>(vocab)}, p.options().dtype(at::kDouble));
  const cudaStream_t stream = stream_of(p);
  dispatch_prob(p.scalar_type(), "verify_tree", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const TensorRows<T> p_rows{ptr<T>(p), nodes, vocab};
    const TensorRows<T> q_rows{ptr<T>(q), nodes, vocab};
    check_status(VerifyTree(p_rows, q_rows, ptr<int64_t>(tokens), ptr<int64_t>(parents), ptr<float>(u_accept),
                            ptr<float>(u_sample), ptr<int64_t>(num_nodes), cfg, r_scratch.data_ptr<double>(),
                            accepted_nodes.data_ptr<int64_t>(), accept_len.data_ptr<int64_t>(),
                            next_token.data_ptr<int64_t>(), stream),
                 "VerifyTreeKernel (verify_tree)");
  });
  return {accepted_nodes, accept_len, next_token};
}

// The one op of this backend that synchronises with the host: the output shape (leaves P, depth + 1)
// depends on the data, so the kernel fills fixed [B, M, M] path buffers, two int32 stats (both maxima over
// the well-formed trees) are copied to the host, and the paths are sliced to [B, P, D]. A malformed tree is
// marked in its own outputs (position_ids = -code, methods.h), as on the CPU.
std::tuple<at::Tensor, at::Tensor, at::Tensor> build_tree_cuda(const at::Tensor& parents_in,
                                                               const at::Tensor& num_nodes_in) {
  check_build_tree(parents_in, num_nodes_in);
  const c10::cuda::CUDAGuard guard(parents_in.device());
  const at::Tensor parents = parents_in.contiguous(), num_nodes = num_nodes_in.contiguous();
  const int64_t batch = parents.size(0), m = parents.size(1);
  at::Tensor mask = at::empty({batch, m, m}, parents.options().dtype(at::kBool));
  at::Tensor position_ids = at::empty({batch, m}, parents.options());
  at::Tensor paths = at::empty({batch, m, m}, parents.options());
  at::Tensor stats = at::zeros({2}, parents.options().dtype(at::kInt));
  check_status(BuildTree(ptr<int64_t>(parents), ptr<int64_t>(num_nodes), to_int(batch, "batch"), to_int(m, "nodes"),
                         mask.data_ptr<bool>(), position_ids.data_ptr<int64_t>(), paths.data_ptr<int64_t>(),
                         stats.data_ptr<int>(), stream_of(parents)),
               "BuildTreeKernel (build_tree)");
  const at::Tensor host = stats.cpu();  // synchronises with the current stream
  const int* s = host.const_data_ptr<int>();
  // With no well-formed tree the paths are (B, 0, 1), as the CPU kernel gives.
  at::Tensor retrieve = paths.narrow(1, 0, s[0]).narrow(2, 0, std::min<int64_t>(std::max(s[1], 1), m)).contiguous();
  return {mask, position_ids, retrieve};
}

at::Tensor neighbor_table_cuda(const at::Tensor& codebook_in, int64_t k, bool normalize) {
  check_neighbor_table(codebook_in, k);
  const c10::cuda::CUDAGuard guard(codebook_in.device());
  const at::Tensor codebook = codebook_in.contiguous();
  const int n = to_int(codebook.size(0), "num_codes");
  const int dim = to_int(codebook.size(1), "dim");
  at::Tensor table = at::empty({n, k}, codebook.options().dtype(at::kInt));
  at::Tensor workspace =
      at::empty({static_cast<int64_t>(NeighborTableWorkspaceFloats(n, dim, normalize))}, codebook.options());
  check_status(NeighborTable(ptr<float>(codebook), n, dim, static_cast<int>(k), normalize,
                             workspace.data_ptr<float>(), table.data_ptr<int32_t>(), stream_of(codebook)),
               "NeighborTableKernel (neighbor_table)");
  return table;
}

std::tuple<at::Tensor, at::Tensor> lantern_relaxed_mass_cuda(const at::Tensor& p_in, const at::Tensor& x_in,
                                                             const at::Tensor& neighbors_in,
                                                             std::optional<double> delta, std::optional<double> lam) {
  check_relaxed_mass(p_in, x_in, neighbors_in, delta, lam);
  const c10::cuda::CUDAGuard guard(p_in.device());
  const at::Tensor p = p_in.contiguous(), x = x_in.contiguous(), neighbors = neighbors_in.contiguous();
  const int64_t rows = p.size(0);
  const int vocab = to_int(p.size(1), "vocab");
  at::Tensor p_tilde = at::empty({rows}, p.options().dtype(at::kFloat));
  at::Tensor merged = at::empty({rows}, x.options().dtype(at::kInt));
  const LanternConfig cfg{lam.has_value(), lam.has_value() ? *lam : *delta};
  const cudaStream_t stream = stream_of(p);
  dispatch_prob(p.scalar_type(), "lantern_relaxed_mass", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_status(LanternRelaxedMass<T>(ptr<T>(p), ptr<int64_t>(x), ptr<int32_t>(neighbors), rows, vocab,
                                       to_int(neighbors.size(1), "k"), cfg,
                                       p_tilde.data_ptr<float>(), merged.data_ptr<int32_t>(), stream),
                 "LanternRelaxedMassKernel (lantern_relaxed_mass)");
  });
  return {p_tilde, merged};
}

std::tuple<at::Tensor, at::Tensor> gsd_group_mass_cuda(const at::Tensor& p_in, const std::optional<at::Tensor>& q_in,
                                                       const at::Tensor& x_in,
                                                       const std::optional<at::Tensor>& embeddings_in, int64_t h_lo,
                                                       int64_t h_hi, double p_thr, double d_thr) {
  check_group_mass(p_in, q_in, x_in, embeddings_in, h_lo, h_hi);
  const c10::cuda::CUDAGuard guard(p_in.device());
  const at::Tensor p = p_in.contiguous(), x = x_in.contiguous();
  const at::Tensor q = contiguous_or_undefined(q_in), embeddings = contiguous_or_undefined(embeddings_in);
  const int64_t rows = to_int(p.size(0), "rows");
  const int vocab = to_int(p.size(1), "vocab");
  at::Tensor group_p = at::empty({rows}, p.options().dtype(at::kFloat));
  at::Tensor group_q = at::empty({rows}, p.options().dtype(at::kFloat));
  GsdParams g{};
  const int64_t side = std::max(vocab - 1, 0);  // a side of the window holds at most V - 1 tokens
  g.h_lo = static_cast<int>(std::min<int64_t>(h_lo, side));
  g.h_hi = static_cast<int>(std::min<int64_t>(h_hi, side));
  g.p_thr = static_cast<float>(p_thr);
  g.d_thr = static_cast<float>(d_thr);
  g.emb = ptr<float>(embeddings);
  g.emb_dim = embeddings.defined() ? to_int(embeddings.size(1), "embedding dim") : 0;
  const cudaStream_t stream = stream_of(p);
  dispatch_prob(p.scalar_type(), "gsd_group_mass", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_status(GsdGroupMass<T>(ptr<T>(p), ptr<T>(q), ptr<int64_t>(x), rows, vocab, g, group_p.data_ptr<float>(),
                                 group_q.data_ptr<float>(), stream),
                 "GsdGroupMassKernel (gsd_group_mass)");
  });
  return {group_p, group_q};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cspd_verify_cuda(
    const at::Tensor& x_in, const at::Tensor& mu_q_in, const at::Tensor& sigma_q_in, const at::Tensor& mu_p_in,
    const at::Tensor& sigma_p_in, const at::Tensor& s_q_in, const at::Tensor& s_p_in, const at::Tensor& u_accept_in,
    const at::Tensor& u_prop_in, const at::Tensor& u_ar_in, double inner_temperature) {
  check_cspd(x_in, mu_q_in, sigma_q_in, mu_p_in, sigma_p_in, s_q_in, s_p_in, u_accept_in, u_prop_in, u_ar_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), mu_q = mu_q_in.contiguous(), sigma_q = sigma_q_in.contiguous(),
                   mu_p = mu_p_in.contiguous(), sigma_p = sigma_p_in.contiguous(), s_q = s_q_in.contiguous(),
                   s_p = s_p_in.contiguous(), u_accept = u_accept_in.contiguous(), u_prop = u_prop_in.contiguous(),
                   u_ar = u_ar_in.contiguous();
  const int64_t n = x.size(0);
  at::Tensor tokens = at::empty(x.sizes(), x.options());
  at::Tensor accepted = at::empty({n}, x.options().dtype(at::kBool));
  at::Tensor fallback = at::empty({n}, x.options().dtype(at::kBool));
  at::Tensor status = at::empty({n}, x.options().dtype(at::kInt));
  check_status(CspdVerify(ptr<float>(x), ptr<float>(mu_q), ptr<float>(sigma_q), ptr<float>(mu_p), ptr<float>(sigma_p),
                          ptr<float>(s_q), ptr<float>(s_p), ptr<float>(u_accept), ptr<float>(u_prop), ptr<float>(u_ar),
                          n, to_int(x.size(1), "dim"), to_int(u_prop.size(1), "max_tries"), inner_temperature,
                          tokens.data_ptr<float>(), accepted.data_ptr<bool>(), fallback.data_ptr<bool>(),
                          status.data_ptr<int32_t>(), stream_of(x)),
               "CspdVerifyKernel (cspd_verify)");
  return {tokens, accepted, fallback, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CUDA, m) {
  m.impl("neighbor_table", &neighbor_table_cuda);
  m.impl("lantern_relaxed_mass", &lantern_relaxed_mass_cuda);
  m.impl("gsd_group_mass", &gsd_group_mass_cuda);
  m.impl("verify_chain", &verify_chain_cuda);
  m.impl("build_tree", &build_tree_cuda);
  m.impl("verify_tree", &verify_tree_cuda);
  m.impl("verify_chain_logits", &logits_glue::verify_chain_logits_cuda);
  m.impl("verify_tree_logits", &logits_glue::verify_tree_logits_cuda);
  m.impl("jacobi_step", &logits_glue::jacobi_step_cuda);
  m.impl("cspd_verify", &cspd_verify_cuda);
}

}  // namespace specdec::gpu
