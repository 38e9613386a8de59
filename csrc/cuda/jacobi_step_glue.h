// CUDA glue of jacobi_step, included by glue.cu (which registers it): the checks of verify_chain_logits with q as
// draft_probs plus the refresh's (csrc/verify_logits_checks.h), the row statistics of the logits, then the chain
// kernel over the logits source (verification) and the refresh / finish kernels of jacobi_step.cuh over the same
// source. Semantics: specdec_kernels/reference/jacobi_step.py. No host synchronisation.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>
#include <tuple>

#include "../verify_logits_checks.h"
#include "glue_common.h"
#include "jacobi_step.cuh"
#include "verify_chain.cuh"
#include "verify_logits_glue.h"

namespace specdec::gpu::logits_glue {

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> jacobi_step_cuda(
    const at::Tensor& logits_in, const at::Tensor& window_in, const std::optional<at::Tensor>& q_in,
    const at::Tensor& u_accept_in, const at::Tensor& u_sample_in, const at::Tensor& u_draft_in,
    const std::optional<at::Tensor>& u_keep_in, const std::optional<at::Tensor>& u_init_in,
    const at::Tensor& num_drafts_in, const at::Tensor& update_in, std::optional<double> cfg_scale,
    double temperature, int64_t top_k, double top_p, int64_t method, const std::optional<at::Tensor>& neighbors_in,
    const std::optional<at::Tensor>& embeddings_in, c10::ArrayRef<double> params) {
  logits::MethodParams mp;
  // The verification half is verify_chain_logits with q as draft_probs: its checks hold for it whole.
  const logits::LogitsShape shape =
      logits::check_chain_logits(logits_in, std::nullopt, q_in, window_in, u_accept_in, u_sample_in, num_drafts_in,
                                 cfg_scale, temperature, top_k, top_p, method, params, neighbors_in, embeddings_in,
                                 &mp);
  logits::check_jacobi_step(q_in, u_draft_in, u_keep_in, u_init_in, update_in, shape, logits_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const cudaStream_t stream = glue::stream_of(logits_in);
  const int64_t batch = shape.batch;
  const int width = to_int(shape.slots - 1, "num_draft_tokens"), vocab = to_int(shape.vocab, "vocab");
  to_int(batch * (width + 1), "batch * slots");  // grids of B * L blocks
  const at::Tensor logits = logits_in.contiguous(), window = window_in.contiguous(),
                   u_accept = u_accept_in.contiguous(), u_sample = u_sample_in.contiguous(),
                   u_draft = u_draft_in.contiguous(), num_drafts = num_drafts_in.contiguous(),
                   update = update_in.contiguous();
  const at::Tensor q = glue::contiguous_or_undefined(q_in);
  const at::Tensor u_keep = glue::contiguous_or_undefined(u_keep_in);
  const at::Tensor u_init = glue::contiguous_or_undefined(u_init_in);
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, embeddings_in);
  const LogitsProcessing proc = processing(cfg_scale, temperature, top_k, top_p, shape.cfg);
  const ChainParams cfg{batch, width, vocab, glue::rule_params(mp)};
  const JacobiParams jacobi{batch, width, vocab};
  at::Tensor gsd_flags = glue::chain_workspace(mp.method, batch, width, window);
  at::Tensor accept_len = at::empty({batch}, window.options());
  at::Tensor next_token = at::empty({batch}, window.options());
  at::Tensor new_window = at::empty({batch, static_cast<int64_t>(width)}, window.options());
  at::Tensor new_q = at::empty({batch, static_cast<int64_t>(width), static_cast<int64_t>(vocab)},
                               logits.options().dtype(at::kFloat));
  // Without window entries no refresh block runs: every row's first fresh entry is 0, as the reference returns.
  at::Tensor first_init = width == 0 ? at::zeros({batch}, window.options()) : at::empty({batch}, window.options());
  at::Tensor refresh_bad = at::empty({static_cast<int64_t>(JacobiRefreshFlags(batch, width))},
                                     window.options().dtype(at::kChar));
  at::Tensor p_stats;
  glue::dispatch_prob(logits.scalar_type(), "jacobi_step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const LogitsRows<T> p = logits_rows<T>(logits, batch, shape.cfg, proc, &p_stats, stream);
    const TensorRows<float> q_old{glue::ptr<float>(q), width, vocab};
    check_status(VerifyChain(p, q_old, glue::ptr<int64_t>(window), glue::ptr<float>(u_accept),
                             glue::ptr<float>(u_sample), glue::ptr<int64_t>(num_drafts), cfg,
                             glue::data_or_null(gsd_flags), accept_len.data_ptr<int64_t>(),
                             next_token.data_ptr<int64_t>(), stream),
                 "VerifyChainKernel (jacobi_step)");
    check_status(JacobiRefresh(p, q_old, glue::ptr<int64_t>(window), glue::ptr<float>(u_draft),
                               glue::ptr<float>(u_keep), glue::ptr<float>(u_init), glue::ptr<int64_t>(num_drafts),
                               glue::ptr<bool>(update), jacobi, refresh_bad.data_ptr<int8_t>(),
                               accept_len.data_ptr<int64_t>(), next_token.data_ptr<int64_t>(),
                               new_window.data_ptr<int64_t>(), new_q.data_ptr<float>(),
                               first_init.data_ptr<int64_t>(), stream),
                 "JacobiRefreshKernel (jacobi_step)");
  });
  return {accept_len, next_token, new_window, new_q, first_init};
}

}  // namespace specdec::gpu::logits_glue
