// CPU Jacobi step (jacobi_step): per row, the chain walk over the processed logits rows (verify_walk.h), then the
// Jacobi refresh from the same processed rows, in one pass; rows in parallel. The new window's q rows are written
// once, straight from the processed rows. Semantics: specdec_kernels/reference/jacobi_step.py.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../checks.h"
#include "../verify_logits_checks.h"
#include "verify_walk.h"

namespace specdec::cpu {
namespace {

using logits::LogitsShape;

template <typename T>
void jacobi_rows(const at::Tensor& logits, const LogitsShape& shape, const Processing& proc, const at::Tensor& window,
                 const at::Tensor& q, const at::Tensor& u_accept, const at::Tensor& u_sample,
                 const at::Tensor& u_draft, const at::Tensor& u_keep, const at::Tensor& u_init,
                 const at::Tensor& num_drafts, const at::Tensor& update, const MethodParams& mp,
                 at::Tensor& accept_len, at::Tensor& next_token, at::Tensor& new_window, at::Tensor& new_q,
                 at::Tensor& first_init) {
  const int64_t batch = shape.batch, width = shape.slots - 1, vocab = shape.vocab;
  const T* cond = logits.data_ptr<T>();
  const LogitsRows<T> p_proto{cond, shape.cfg ? cond + batch * shape.slots * vocab : nullptr, shape.slots, vocab,
                              proc, {}};
  const float* q_ptr = q.defined() ? q.data_ptr<float>() : nullptr;
  const int64_t* window_ptr = window.data_ptr<int64_t>();
  const float* u_accept_ptr = u_accept.data_ptr<float>();
  const float* u_sample_ptr = u_sample.data_ptr<float>();
  const float* u_draft_ptr = u_draft.data_ptr<float>();
  const float* u_keep_ptr = u_keep.defined() ? u_keep.data_ptr<float>() : nullptr;
  const float* u_init_ptr = u_init.defined() ? u_init.data_ptr<float>() : nullptr;
  const int64_t* n_ptr = num_drafts.data_ptr<int64_t>();
  const bool* update_ptr = update.data_ptr<bool>();
  int64_t* accept_out = accept_len.data_ptr<int64_t>();
  int64_t* token_out = next_token.data_ptr<int64_t>();
  int64_t* window_out = new_window.data_ptr<int64_t>();
  float* q_out = new_q.data_ptr<float>();
  int64_t* first_out = first_init.data_ptr<int64_t>();
  at::parallel_for(0, batch, std::max<int64_t>(1, row_grain(vocab) / std::max<int64_t>(width, 1)),
                   [&](int64_t begin, int64_t end) {
    LogitsRows<T> p = p_proto;
    TensorRows<float> q_rows{q_ptr, width, vocab};
    TensorRows<float>* q_src = q_ptr ? &q_rows : kOneHot<TensorRows<float>>;
    ChainScratch scratch;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* window_b = window_ptr + b * width;
      ChainOutcome out = chain_walk(p, q_src, b, n_ptr[b], width, vocab, window_b, u_accept_ptr + b * width,
                                    u_sample_ptr[b], mp, scratch);
      int64_t first = width;
      bool kept = true;
      if (out.next_token >= 0 && update_ptr[b]) {
        const JacobiRow row{window_b,
                            u_draft_ptr + b * width,
                            u_keep_ptr ? u_keep_ptr + b * width : nullptr,
                            u_init_ptr ? u_init_ptr + b * width : nullptr,
                            window_out + b * width,
                            q_out + b * width * vocab};
        first = jacobi_refresh(p, q_src, b, out.accept_len, n_ptr[b], width, vocab, row, scratch);
        kept = first < 0;
        if (kept) {  // a value the refresh read is not a probability (code 6)
          out = bad_row(kBadProbability);
          first = width;
        }
      }
      if (kept) {  // the row keeps its window and q
        std::copy(window_b, window_b + width, window_out + b * width);
        for (int64_t j = 0; j < width; ++j) {
          float* dst = q_out + (b * width + j) * vocab;
          if (q_ptr) {
            std::memcpy(dst, q_ptr + (b * width + j) * vocab, sizeof(float) * vocab);
          } else {
            one_hot_row(dst, vocab, valid_id(window_b[j], vocab) ? window_b[j] : -1);
          }
        }
      }
      accept_out[b] = out.accept_len;
      token_out[b] = out.next_token;
      first_out[b] = first;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> jacobi_step_cpu(
    const at::Tensor& logits_in, const at::Tensor& window_in, const std::optional<at::Tensor>& q_in,
    const at::Tensor& u_accept_in, const at::Tensor& u_sample_in, const at::Tensor& u_draft_in,
    const std::optional<at::Tensor>& u_keep_in, const std::optional<at::Tensor>& u_init_in,
    const at::Tensor& num_drafts_in, const at::Tensor& update_in, std::optional<double> cfg_scale,
    double temperature, int64_t top_k, double top_p, int64_t method, const std::optional<at::Tensor>& neighbors_in,
    const std::optional<at::Tensor>& embeddings_in, c10::ArrayRef<double> params) {
  MethodParams mp;
  // The verification half is verify_chain_logits with q as draft_probs: its checks hold for it whole.
  const LogitsShape shape =
      logits::check_chain_logits(logits_in, std::nullopt, q_in, window_in, u_accept_in, u_sample_in, num_drafts_in,
                                 cfg_scale, temperature, top_k, top_p, method, params, neighbors_in, embeddings_in,
                                 &mp);
  logits::check_jacobi_step(q_in, u_draft_in, u_keep_in, u_init_in, update_in, shape, logits_in);
  const int64_t batch = shape.batch, width = shape.slots - 1, vocab = shape.vocab;
  const at::Tensor logits = logits_in.contiguous(), window = window_in.contiguous(),
                   u_accept = u_accept_in.contiguous(), u_sample = u_sample_in.contiguous(),
                   u_draft = u_draft_in.contiguous(), num_drafts = num_drafts_in.contiguous(),
                   update = update_in.contiguous();
  const at::Tensor q = q_in ? q_in->contiguous() : at::Tensor();
  const at::Tensor u_keep = u_keep_in ? u_keep_in->contiguous() : at::Tensor();
  const at::Tensor u_init = u_init_in ? u_init_in->contiguous() : at::Tensor();
  const logits::MethodTables tables = logits::bind_tables(&mp, neighbors_in, embeddings_in);
  at::Tensor accept_len = at::empty({batch}, window.options());
  at::Tensor next_token = at::empty({batch}, window.options());
  at::Tensor new_window = at::empty({batch, width}, window.options());
  at::Tensor new_q = at::empty({batch, width, vocab}, logits.options().dtype(at::kFloat));
  at::Tensor first_init = at::empty({batch}, window.options());
  const Processing proc = make_processing(cfg_scale, temperature, top_k, top_p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "jacobi_step_cpu", [&] {
    jacobi_rows<scalar_t>(logits, shape, proc, window, q, u_accept, u_sample, u_draft, u_keep, u_init, num_drafts,
                          update, mp, accept_len, next_token, new_window, new_q, first_init);
  });
  return {accept_len, next_token, new_window, new_q, first_init};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("jacobi_step", &jacobi_step_cpu); }

}  // namespace specdec::cpu
