// Helpers every CUDA glue file shares (glue.cu, verify_logits_glue.h, jacobi_step_glue.h): launch status, the 32-bit
// range of the kernels, stream, dtype dispatch, and the one translation of the decoded rule parameters
// (logits::decode_params + bind_tables, csrc/verify_logits_checks.h) into the kernels' RuleParams.
// Includes are deliberately minimal (docs/BUILD.md §4): never ATen/cuda/CUDAContext.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "../verify_logits_checks.h"
#include "verify_common.cuh"

namespace specdec::gpu::glue {

inline void check_status(cudaError_t status, const char* kernel) {
  TORCH_CHECK(status == cudaSuccess, "specdec_kernels: CUDA kernel ", kernel, " failed: ", cudaGetErrorName(status),
              " (", cudaGetErrorString(status), ")");
}

inline cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// Kernels index within a row (and grids count rows) with 32-bit ints.
inline int to_int(int64_t value, const char* what) {
  TORCH_CHECK(value >= 0 && value <= std::numeric_limits<int>::max(), "specdec_kernels CUDA: ", what, " = ", value,
              " exceeds the 32-bit range of the CUDA kernels");
  return static_cast<int>(value);
}

template <class T>
struct TypeTag {
  using type = T;
};

// Probability / logits dtypes -> the CUDA element types the kernels are instantiated with.
template <class Fn>
void dispatch_prob(at::ScalarType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case at::kFloat:
      fn(TypeTag<float>{});
      break;
    case at::kHalf:
      fn(TypeTag<__half>{});
      break;
    case at::kBFloat16:
      fn(TypeTag<__nv_bfloat16>{});
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", dtype);
  }
}

template <class T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.const_data_ptr()) : nullptr;
}

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// The kernels' view of a rule decoded by logits::decode_params, its tables bound by logits::bind_tables (every chain
// and tree op, probabilities, logits and Jacobi, builds its parameters here: typical's epsilon / alpha included).
inline RuleParams rule_params(const logits::MethodParams& mp) {
  RuleParams rule{};
  rule.method = mp.method;
  rule.neighbors = mp.neighbors;
  rule.k = to_int(mp.k, "k");
  rule.lantern = mp.lantern;
  // GsdConfig clips a side of the window to V - 1 tokens, so the counts fit an int.
  rule.gsd.h_lo = static_cast<int>(mp.gsd.h_lo);
  rule.gsd.h_hi = static_cast<int>(mp.gsd.h_hi);
  rule.gsd.p_thr = mp.gsd.p_thr;
  rule.gsd.d_thr = mp.gsd.d_thr;
  rule.gsd.emb = mp.embeddings;
  rule.gsd.emb_dim = to_int(mp.emb_dim, "embedding dim");
  rule.typical = mp.typical;
  return rule;
}

// The chain kernels' per-draft workspace: GSD's pre-pass writes one pass / fail flag per draft (an empty tensor for
// the other rules).
inline at::Tensor chain_workspace(int64_t method, int64_t batch, int drafts, const at::Tensor& like) {
  if (method != kGsd) return at::Tensor();
  to_int(batch * drafts, "batch * num_draft_tokens");
  return at::empty({batch * drafts}, like.options().dtype(at::kChar));
}

inline int8_t* data_or_null(at::Tensor& t) { return t.defined() ? t.data_ptr<int8_t>() : nullptr; }

}  // namespace specdec::gpu::glue
