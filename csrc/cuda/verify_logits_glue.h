// CUDA glue of verify_chain_logits / verify_tree_logits, included by glue.cu (which registers the two functions): the
// shared structural checks and parameter decoding (csrc/verify_logits_checks.h), the device guard and stream, the
// row statistics of the logits (row_sources.cuh), then the same chain / tree kernels as verify_chain / verify_tree
// over the logits source, whose rows are processed where the kernels read them. No host synchronisation (capturable
// in a CUDA graph).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>

#include "../verify_logits_checks.h"
#include "glue_common.h"
#include "row_sources.cuh"
#include "verify_chain.cuh"
#include "verify_tree.cuh"

namespace specdec::gpu::logits_glue {

using glue::check_status;
using glue::to_int;

inline LogitsProcessing processing(std::optional<double> cfg_scale, double temperature, int64_t top_k, double top_p,
                                   bool cfg) {
  return {cfg, cfg_scale.value_or(0.0), std::max(temperature, logits::kMinTemperature),
          static_cast<int>(std::min<int64_t>(top_k, std::numeric_limits<int>::max())), top_p};
}

// A logits source over a contiguous (rows or 2 * rows, S, V) tensor of T (cfg: a doubled batch, cond rows first),
// with its row statistics computed into *stats_out (kept alive by the caller until the kernels reading it ran).
template <class T>
LogitsRows<T> logits_rows(const at::Tensor& logits, int64_t rows, bool cfg, const LogitsProcessing& proc_in,
                          at::Tensor* stats_out, cudaStream_t stream) {
  const int slots = to_int(logits.size(1), "slots"), vocab = to_int(logits.size(2), "vocab");
  const int64_t count = rows * slots;
  to_int(count, "logits rows (batch * slots)");  // one statistics block per row
  *stats_out = at::empty({count * static_cast<int64_t>(sizeof(logits::RowStatistics))},
                         logits.options().dtype(at::kByte));
  auto* stats = reinterpret_cast<logits::RowStatistics*>(stats_out->data_ptr<uint8_t>());
  LogitsProcessing proc = proc_in;
  proc.cfg = cfg;
  const T* cond = glue::ptr<T>(logits);
  check_status(RowStats(cond, count, vocab, proc, stats, stream), "RowStatsKernel (logits processing)");
  return LogitsRows<T>{cond, cfg ? cond + count * vocab : nullptr, slots, vocab, proc.scale, proc.temperature, stats};
}

inline std::tuple<at::Tensor, at::Tensor> verify_chain_logits_cuda(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& draft_logits_in,
    const std::optional<at::Tensor>& draft_probs_in, const at::Tensor& draft_in, const at::Tensor& u_accept_in,
    const at::Tensor& u_sample_in, const at::Tensor& num_drafts_in, std::optional<double> cfg_scale,
    double temperature, int64_t top_k, double top_p, int64_t method, const std::optional<at::Tensor>& neighbors_in,
    const std::optional<at::Tensor>& embeddings_in, c10::ArrayRef<double> params) {
  logits::MethodParams mp;
  const logits::LogitsShape shape =
      logits::check_chain_logits(logits_in, draft_logits_in, draft_probs_in, draft_in, u_accept_in, u_sample_in,
                                 num_drafts_in, cfg_scale, temperature, top_k, top_p, method, params, neighbors_in,
                                 embeddings_in, &mp);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const cudaStream_t stream = glue::stream_of(logits_in);
  const int64_t batch = shape.batch;
  const int drafts = to_int(shape.slots - 1, "num_draft_tokens"), vocab = to_int(shape.vocab, "vocab");
  to_int(batch, "batch");
  const at::Tensor logits = logits_in.contiguous(), draft = draft_in.contiguous(),
                   u_accept = u_accept_in.contiguous(), u_sample = u_sample_in.contiguous(),
                   num_drafts = num_drafts_in.contiguous();
  const at::Tensor draft_logits = glue::contiguous_or_undefined(draft_logits_in);
  const at::Tensor draft_probs = draft_probs_in ? draft_probs_in->to(at::kFloat).contiguous() : at::Tensor();
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, embeddings_in);
  const LogitsProcessing proc = processing(cfg_scale, temperature, top_k, top_p, shape.cfg);
  const ChainParams cfg{batch, drafts, vocab, glue::rule_params(mp)};
  at::Tensor gsd_flags = glue::chain_workspace(mp.method, batch, drafts, draft);
  at::Tensor accept_len = at::empty({batch}, draft.options());
  at::Tensor next_token = at::empty({batch}, draft.options());
  at::Tensor p_stats, q_stats;
  glue::dispatch_prob(logits.scalar_type(), "verify_chain_logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const LogitsRows<T> p = logits_rows<T>(logits, batch, shape.cfg, proc, &p_stats, stream);
    auto verify = [&](const auto& q) {
      check_status(VerifyChain(p, q, glue::ptr<int64_t>(draft), glue::ptr<float>(u_accept),
                               glue::ptr<float>(u_sample), glue::ptr<int64_t>(num_drafts), cfg,
                               glue::data_or_null(gsd_flags), accept_len.data_ptr<int64_t>(),
                               next_token.data_ptr<int64_t>(), stream),
                   "VerifyChainKernel (verify_chain_logits)");
    };
    if (draft_logits.defined()) {  // the draft's rows get the same processing (CFG only for a doubled batch)
      verify(logits_rows<T>(draft_logits, batch, shape.draft_cfg, proc, &q_stats, stream));
    } else {  // draft probabilities, or none (one-hot drafts)
      verify(TensorRows<float>{glue::ptr<float>(draft_probs), drafts, vocab});
    }
  });
  return {accept_len, next_token};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_logits_cuda(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& draft_probs_in, const at::Tensor& tokens_in,
    const at::Tensor& parents_in, const at::Tensor& u_accept_in, const at::Tensor& u_sample_in,
    const at::Tensor& num_nodes_in, std::optional<double> cfg_scale, double temperature, int64_t top_k, double top_p,
    int64_t method, const std::optional<at::Tensor>& neighbors_in, c10::ArrayRef<double> params) {
  logits::MethodParams mp;
  const logits::LogitsShape shape =
      logits::check_tree_logits(logits_in, draft_probs_in, tokens_in, parents_in, u_accept_in, u_sample_in,
                                num_nodes_in, cfg_scale, temperature, top_k, top_p, method, params, neighbors_in, &mp);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const cudaStream_t stream = glue::stream_of(logits_in);
  const int64_t batch = shape.batch;
  const int nodes = to_int(shape.slots, "num_nodes"), vocab = to_int(shape.vocab, "vocab");
  to_int(batch, "batch");
  const at::Tensor logits = logits_in.contiguous(), tokens = tokens_in.contiguous(),
                   parents = parents_in.contiguous(), u_accept = u_accept_in.contiguous(),
                   u_sample = u_sample_in.contiguous(), num_nodes = num_nodes_in.contiguous();
  const at::Tensor draft_probs = draft_probs_in ? draft_probs_in->to(at::kFloat).contiguous() : at::Tensor();
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, std::nullopt);
  const LogitsProcessing proc = processing(cfg_scale, temperature, top_k, top_p, shape.cfg);
  const TreeParams cfg{batch, nodes, vocab, glue::rule_params(mp)};
  at::Tensor accepted_nodes = at::empty({batch, std::max<int64_t>(nodes - 1, 0)}, tokens.options());
  at::Tensor accept_len = at::empty({batch}, tokens.options());
  at::Tensor next_token = at::empty({batch}, tokens.options());
  // r, the current target row of each tree, in float64 (never materialised per node).
  at::Tensor r_scratch = at::empty({batch, static_cast<int64_t>(vocab)}, logits.options().dtype(at::kDouble));
  at::Tensor p_stats;
  glue::dispatch_prob(logits.scalar_type(), "verify_tree_logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const LogitsRows<T> p = logits_rows<T>(logits, batch, shape.cfg, proc, &p_stats, stream);
    const TensorRows<float> q{glue::ptr<float>(draft_probs), nodes, vocab};
    check_status(VerifyTree(p, q, glue::ptr<int64_t>(tokens), glue::ptr<int64_t>(parents),
                            glue::ptr<float>(u_accept), glue::ptr<float>(u_sample), glue::ptr<int64_t>(num_nodes),
                            cfg, r_scratch.data_ptr<double>(), accepted_nodes.data_ptr<int64_t>(),
                            accept_len.data_ptr<int64_t>(), next_token.data_ptr<int64_t>(), stream),
                 "VerifyTreeKernel (verify_tree_logits)");
  });
  return {accepted_nodes, accept_len, next_token};
}

}  // namespace specdec::gpu::logits_glue
