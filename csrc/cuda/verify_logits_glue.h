// CUDA glue of verify_chain_logits / verify_tree_logits, included by glue.cu (which registers the two functions):
// the shared structural checks, the device guard and stream, workspaces, then the launchers of verify_logits.cuh
// around the chain / tree verification kernels. No host synchronisation (capturable in a CUDA graph).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>

#include "../verify_logits_checks.h"
#include "verify_chain.cuh"
#include "verify_logits.cuh"
#include "verify_tree.cuh"

namespace specdec::gpu::logits_glue {

inline void check(cudaError_t status, const char* kernel) {
  TORCH_CHECK(status == cudaSuccess, "specdec_kernels: CUDA kernel ", kernel, " failed: ", cudaGetErrorName(status),
              " (", cudaGetErrorString(status), ")");
}

inline int as_int(int64_t value, const char* what) {
  TORCH_CHECK(value >= 0 && value <= std::numeric_limits<int>::max(), "specdec_kernels CUDA: ", what, " = ", value,
              " exceeds the 32-bit range of the CUDA kernels");
  return static_cast<int>(value);
}

inline LogitsProcessing processing(std::optional<double> cfg_scale, double temperature, int64_t top_k, double top_p,
                                   bool cfg) {
  return {cfg, cfg_scale.value_or(0.0), std::max(temperature, logits::kMinTemperature),
          static_cast<int>(std::min<int64_t>(top_k, std::numeric_limits<int>::max())), top_p};
}

// Processes a (rows or 2 * rows, S, V) logits tensor into float32 probabilities (rows, S, V) and per-row flags.
inline std::pair<at::Tensor, at::Tensor> process(const at::Tensor& logits_in, int64_t rows, bool cfg,
                                                 const LogitsProcessing& proc_in, cudaStream_t stream) {
  const at::Tensor logits = logits_in.contiguous();
  const int64_t slots = logits.size(1), vocab = logits.size(2);
  at::Tensor out = at::empty({rows, slots, vocab}, logits.options().dtype(at::kFloat));
  at::Tensor bad = at::empty({rows, slots}, logits.options().dtype(at::kChar));
  LogitsProcessing proc = proc_in;
  proc.cfg = cfg;
  const int v = as_int(vocab, "vocab");
  const auto launch = [&](auto* data) {
    check(ProcessLogits(data, rows * slots, v, proc, out.data_ptr<float>(), bad.data_ptr<int8_t>(), stream),
          "ProcessLogitsKernel (verify_logits)");
  };
  switch (logits.scalar_type()) {
    case at::kFloat:
      launch(static_cast<const float*>(logits.const_data_ptr()));
      break;
    case at::kHalf:
      launch(static_cast<const __half*>(logits.const_data_ptr()));
      break;
    case at::kBFloat16:
      launch(static_cast<const __nv_bfloat16*>(logits.const_data_ptr()));
      break;
    default:
      TORCH_CHECK(false, "verify_logits: unsupported logits dtype ", logits.scalar_type());
  }
  return {out, bad};
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits_in.device().index()).stream();
  const int64_t batch = shape.batch;
  const int drafts = as_int(shape.slots - 1, "num_draft_tokens"), vocab = as_int(shape.vocab, "vocab");
  const at::Tensor draft = draft_in.contiguous(), u_accept = u_accept_in.contiguous(),
                   u_sample = u_sample_in.contiguous(), num_drafts = num_drafts_in.contiguous();
  const at::Tensor neighbors = mp.method == kLantern ? neighbors_in->contiguous() : at::Tensor();
  const at::Tensor embeddings = (mp.method == kGsd && embeddings_in) ? embeddings_in->contiguous() : at::Tensor();
  const LogitsProcessing proc = processing(cfg_scale, temperature, top_k, top_p, shape.cfg);

  ChainLogitsRows rows{batch, drafts, vocab, neighbors.defined() ? neighbors.const_data_ptr<int32_t>() : nullptr,
                       neighbors.defined() ? as_int(neighbors.size(1), "k") : 0};
  at::Tensor code = at::empty({batch}, draft.options());
  at::Tensor safe_n = at::empty({batch}, draft.options());
  check(ChainRowCodes(num_drafts.const_data_ptr<int64_t>(), draft.const_data_ptr<int64_t>(),
                      u_accept.const_data_ptr<float>(), u_sample.const_data_ptr<float>(), rows,
                      code.data_ptr<int64_t>(), safe_n.data_ptr<int64_t>(), stream),
        "ChainRowCodesKernel (verify_chain_logits)");

  const auto [p, bad_p] = process(logits_in, batch, shape.cfg, proc, stream);
  at::Tensor q, bad_q;
  if (draft_logits_in) {
    std::tie(q, bad_q) = process(*draft_logits_in, batch, shape.draft_cfg, proc, stream);
  } else if (draft_probs_in) {
    q = draft_probs_in->to(at::kFloat).contiguous();
    bad_q = at::empty({batch, static_cast<int64_t>(drafts)}, draft.options().dtype(at::kChar));
    check(InvalidRows(q.const_data_ptr<float>(), batch * drafts, vocab, bad_q.data_ptr<int8_t>(), stream),
          "InvalidRowsKernel (verify_chain_logits)");
  }

  ChainParams cfg{};
  cfg.batch = batch;
  cfg.max_drafts = drafts;
  cfg.vocab = vocab;
  cfg.neighbors = rows.neighbors;
  cfg.k = rows.k;
  cfg.lantern = mp.lantern;
  cfg.gsd.h_lo = static_cast<int>(mp.gsd.h_lo);  // clipped to [0, V - 1] by GsdConfig::decode
  cfg.gsd.h_hi = static_cast<int>(mp.gsd.h_hi);
  cfg.gsd.p_thr = mp.gsd.p_thr;
  cfg.gsd.d_thr = mp.gsd.d_thr;
  cfg.gsd.emb = embeddings.defined() ? embeddings.const_data_ptr<float>() : nullptr;
  cfg.gsd.emb_dim = embeddings.defined() ? as_int(embeddings.size(1), "embedding dim") : 0;
  at::Tensor accept_len = at::empty({batch}, draft.options());
  at::Tensor next_token = at::empty({batch}, draft.options());
  at::Tensor gsd_flags;  // GSD: the verification's per-draft pass/fail workspace
  if (mp.method == kGsd) {
    as_int(batch * drafts, "batch * num_draft_tokens");
    gsd_flags = at::empty({static_cast<int64_t>(VerifyChainGsdFlags(batch, drafts))}, draft.options().dtype(at::kChar));
  }
  // Bad rows run with num_drafts = 0 (no id of theirs is read) and are overwritten by the fix-up.
  check(VerifyChain<float>(p.const_data_ptr<float>(), q.defined() ? q.const_data_ptr<float>() : nullptr,
                           draft.const_data_ptr<int64_t>(), u_accept.const_data_ptr<float>(),
                           u_sample.const_data_ptr<float>(), safe_n.const_data_ptr<int64_t>(),
                           static_cast<int>(mp.method), cfg,
                           gsd_flags.defined() ? gsd_flags.data_ptr<int8_t>() : nullptr,
                           accept_len.data_ptr<int64_t>(), next_token.data_ptr<int64_t>(), stream),
        "VerifyChainKernel (verify_chain_logits)");
  check(ChainFixup(code.const_data_ptr<int64_t>(), safe_n.const_data_ptr<int64_t>(), bad_p.const_data_ptr<int8_t>(),
                   bad_q.defined() ? bad_q.const_data_ptr<int8_t>() : nullptr, rows, accept_len.data_ptr<int64_t>(),
                   next_token.data_ptr<int64_t>(), stream),
        "ChainFixupKernel (verify_chain_logits)");
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits_in.device().index()).stream();
  const int64_t batch = shape.batch;
  const int nodes = as_int(shape.slots, "num_nodes"), vocab = as_int(shape.vocab, "vocab");
  const at::Tensor tokens = tokens_in.contiguous(), parents = parents_in.contiguous(),
                   u_accept = u_accept_in.contiguous(), u_sample = u_sample_in.contiguous(),
                   num_nodes = num_nodes_in.contiguous();
  const at::Tensor neighbors = mp.method == kLantern ? neighbors_in->contiguous() : at::Tensor();
  const LogitsProcessing proc = processing(cfg_scale, temperature, top_k, top_p, shape.cfg);

  TreeLogitsRows rows{batch, nodes, vocab, neighbors.defined() ? neighbors.const_data_ptr<int32_t>() : nullptr,
                      neighbors.defined() ? as_int(neighbors.size(1), "k") : 0};
  at::Tensor code = at::empty({batch}, tokens.options());
  at::Tensor safe_nodes = at::empty({batch}, tokens.options());
  check(TreeRowCodes(num_nodes.const_data_ptr<int64_t>(), tokens.const_data_ptr<int64_t>(),
                     parents.const_data_ptr<int64_t>(), u_accept.const_data_ptr<float>(),
                     u_sample.const_data_ptr<float>(), rows, code.data_ptr<int64_t>(), safe_nodes.data_ptr<int64_t>(),
                     stream),
        "TreeRowCodesKernel (verify_tree_logits)");
  const auto [p, bad_p] = process(logits_in, batch, shape.cfg, proc, stream);
  at::Tensor q, bad_q;
  if (draft_probs_in) {
    q = draft_probs_in->to(at::kFloat).contiguous();
    bad_q = at::empty({batch, static_cast<int64_t>(nodes)}, tokens.options().dtype(at::kChar));
    check(InvalidRows(q.const_data_ptr<float>(), batch * nodes, vocab, bad_q.data_ptr<int8_t>(), stream),
          "InvalidRowsKernel (verify_tree_logits)");
  }
  TreeParams cfg{};
  cfg.batch = batch;
  cfg.nodes = nodes;
  cfg.vocab = vocab;
  cfg.neighbors = rows.neighbors;
  cfg.k = rows.k;
  cfg.lantern = mp.lantern;
  at::Tensor accepted_nodes = at::empty({batch, std::max<int64_t>(nodes - 1, 0)}, tokens.options());
  at::Tensor accept_len = at::empty({batch}, tokens.options());
  at::Tensor next_token = at::empty({batch}, tokens.options());
  at::Tensor r_scratch = at::empty({batch, static_cast<int64_t>(vocab)}, p.options().dtype(at::kDouble));
  check(VerifyTree<float>(p.const_data_ptr<float>(), q.defined() ? q.const_data_ptr<float>() : nullptr,
                          tokens.const_data_ptr<int64_t>(), parents.const_data_ptr<int64_t>(),
                          u_accept.const_data_ptr<float>(), u_sample.const_data_ptr<float>(),
                          safe_nodes.const_data_ptr<int64_t>(), mp.method == kLantern, cfg,
                          r_scratch.data_ptr<double>(), accepted_nodes.data_ptr<int64_t>(),
                          accept_len.data_ptr<int64_t>(), next_token.data_ptr<int64_t>(), stream),
        "VerifyTreeKernel (verify_tree_logits)");
  check(TreeFixup(code.const_data_ptr<int64_t>(), safe_nodes.const_data_ptr<int64_t>(),
                  parents.const_data_ptr<int64_t>(), bad_p.const_data_ptr<int8_t>(),
                  bad_q.defined() ? bad_q.const_data_ptr<int8_t>() : nullptr, rows,
                  accepted_nodes.data_ptr<int64_t>(), accept_len.data_ptr<int64_t>(), next_token.data_ptr<int64_t>(),
                  stream),
        "TreeFixupKernel (verify_tree_logits)");
  return {accepted_nodes, accept_len, next_token};
}

}  // namespace specdec::gpu::logits_glue
