// Structural input checks shared by the CPU and CUDA glue (one rule set per op, written once): tensor
// ranks, shapes, dtypes, devices, method codes and the packed-parameter list. They say nothing about the
// values: ids, counts, parents, uniforms and probabilities are range-checked by the kernels themselves,
// row by row, which report a bad row through its outputs (methods.h RowStatus) instead of reading out of
// bounds. The Python wrappers turn those reports into ValueErrors.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <utility>

#include "methods.h"

namespace specdec {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(a.device() == ref.device(), name, " must be on ", ref.device(), ", got ", a.device());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

inline void check_neighbors(const at::Tensor& neighbors, int64_t vocab, const at::Tensor& p) {
  check_dtype(neighbors, at::kInt, "neighbors");
  check_same(neighbors, p, "neighbors");
  TORCH_CHECK(neighbors.dim() == 2 && neighbors.size(0) == vocab, "neighbors must be (", vocab, ", k), got ",
              neighbors.sizes());
}

inline void check_lantern_budget(std::optional<double> delta, std::optional<double> lam) {
  TORCH_CHECK(delta.has_value() != lam.has_value(), "exactly one of delta and lam must be given");
}

// The packed parameter list of verify_chain / verify_tree (methods.h): its length for the method, and the
// entries whose meaning needs a particular form (window sides: integers >= 0; use_lambda: 0 or 1).
inline void check_params(int64_t method, c10::ArrayRef<double> params) {
  TORCH_CHECK(static_cast<int64_t>(params.size()) == param_count(method), "params must have ", param_count(method),
              " entries for method ", method_name(method), " (code ", method, "), got ", params.size());
  if (method == kGsd) {
    for (int64_t i : {int64_t{gsd_param::kHLo}, int64_t{gsd_param::kHHi}}) {
      const double h = params[i];
      TORCH_CHECK(h >= 0.0 && std::floor(h) == h, "gsd params: the rank window entries must be integers >= 0, got ",
                  h);
    }
  } else if (method == kLantern) {
    const double flag = params[lantern_param::kUseLambda];
    TORCH_CHECK(flag == 0.0 || flag == 1.0, "lantern params: use_lambda must be 0 or 1, got ", flag);
  }
}

// The method code is one the op takes (methods.h traits), with a well-formed params list.
inline void check_method(int64_t method, c10::ArrayRef<double> params, bool chain) {
  const MethodTraits traits = method_traits(method);
  TORCH_CHECK(chain ? traits.chain : traits.tree, "method code ", method, " (", method_name(method),
              ") is not a ", chain ? "chain" : "tree", " verification rule");
  check_params(method, params);
}

inline void check_chain(const at::Tensor& p, const std::optional<at::Tensor>& q, const at::Tensor& draft,
                        const at::Tensor& u_accept, const at::Tensor& u_sample, const at::Tensor& num_drafts,
                        int64_t method, const std::optional<at::Tensor>& neighbors,
                        const std::optional<at::Tensor>& embeddings, c10::ArrayRef<double> params) {
  TORCH_CHECK(p.dim() == 3 && p.size(1) >= 1, "p must be (batch, num_drafts + 1, vocab), got ", p.sizes());
  check_float(p, "p");
  const int64_t batch = p.size(0), drafts = p.size(1) - 1, vocab = p.size(2);
  if (q) {
    check_shape(*q, {batch, drafts, vocab}, "q");
    check_dtype(*q, p.scalar_type(), "q");
    check_same(*q, p, "q");
  }
  check_shape(draft, {batch, drafts}, "draft");
  check_dtype(draft, at::kLong, "draft");
  check_shape(u_accept, {batch, drafts}, "u_accept");
  check_dtype(u_accept, at::kFloat, "u_accept");
  check_shape(u_sample, {batch}, "u_sample");
  check_dtype(u_sample, at::kFloat, "u_sample");
  check_shape(num_drafts, {batch}, "num_drafts");
  check_dtype(num_drafts, at::kLong, "num_drafts");
  for (const at::Tensor* t : {&draft, &u_accept, &u_sample, &num_drafts}) check_same(*t, p, "chain inputs");
  check_method(method, params, /*chain=*/true);
  if (needs_neighbors(method)) {
    TORCH_CHECK(neighbors.has_value(), "method ", method_name(method), " needs neighbors");
    check_neighbors(*neighbors, vocab, p);
  }
  if (method_traits(method).takes_embeddings && embeddings) {
    check_dtype(*embeddings, at::kFloat, "embeddings");
    check_same(*embeddings, p, "embeddings");
    TORCH_CHECK(embeddings->dim() == 2 && embeddings->size(0) == vocab, "embeddings must be (", vocab,
                ", dim), got ", embeddings->sizes());
  }
}

inline void check_tree(const at::Tensor& p, const std::optional<at::Tensor>& q, const at::Tensor& tree_tokens,
                       const at::Tensor& parents, const at::Tensor& u_accept, const at::Tensor& u_sample,
                       const at::Tensor& num_nodes, int64_t method, const std::optional<at::Tensor>& neighbors,
                       c10::ArrayRef<double> params) {
  TORCH_CHECK(p.dim() == 3 && p.size(1) >= 1, "p must be (batch, num_nodes, vocab), got ", p.sizes());
  check_float(p, "p");
  const int64_t batch = p.size(0), nodes = p.size(1), vocab = p.size(2);
  if (q) {
    check_shape(*q, p.sizes(), "q");
    check_dtype(*q, p.scalar_type(), "q");
    check_same(*q, p, "q");
  }
  check_shape(tree_tokens, {batch, nodes}, "tree_tokens");
  check_dtype(tree_tokens, at::kLong, "tree_tokens");
  check_shape(parents, {batch, nodes}, "parents");
  check_dtype(parents, at::kLong, "parents");
  check_shape(u_accept, {batch, nodes}, "u_accept");
  check_dtype(u_accept, at::kFloat, "u_accept");
  check_shape(u_sample, {batch}, "u_sample");
  check_dtype(u_sample, at::kFloat, "u_sample");
  check_shape(num_nodes, {batch}, "num_nodes");
  check_dtype(num_nodes, at::kLong, "num_nodes");
  for (const at::Tensor* t : {&tree_tokens, &parents, &u_accept, &u_sample, &num_nodes}) check_same(*t, p, "tree inputs");
  check_method(method, params, /*chain=*/false);
  if (needs_neighbors(method)) {
    TORCH_CHECK(neighbors.has_value(), "method ", method_name(method), " needs neighbors");
    check_neighbors(*neighbors, vocab, p);
  }
}

// ---- Checks of the remaining ops, written once for the CPU and CUDA glue.

inline void check_relaxed_mass(const at::Tensor& p, const at::Tensor& x, const at::Tensor& neighbors,
                               std::optional<double> delta, std::optional<double> lam) {
  TORCH_CHECK(p.dim() == 2, "p must be (rows, vocab), got ", p.sizes());
  check_float(p, "p");
  check_shape(x, {p.size(0)}, "x");
  check_dtype(x, at::kLong, "x");
  check_same(x, p, "x");
  check_neighbors(neighbors, p.size(1), p);
  check_lantern_budget(delta, lam);
}

inline void check_group_mass(const at::Tensor& p, const std::optional<at::Tensor>& q, const at::Tensor& x,
                             const std::optional<at::Tensor>& embeddings, int64_t h_lo, int64_t h_hi) {
  TORCH_CHECK(p.dim() == 2, "p must be (rows, vocab), got ", p.sizes());
  check_float(p, "p");
  const int64_t rows = p.size(0), vocab = p.size(1);
  if (q) {
    check_shape(*q, p.sizes(), "q");
    check_dtype(*q, p.scalar_type(), "q");
    check_same(*q, p, "q");
  }
  check_shape(x, {rows}, "x");
  check_dtype(x, at::kLong, "x");
  check_same(x, p, "x");
  if (embeddings) {
    check_dtype(*embeddings, at::kFloat, "embeddings");
    check_same(*embeddings, p, "embeddings");
    TORCH_CHECK(embeddings->dim() == 2 && embeddings->size(0) == vocab, "embeddings must be (", vocab, ", dim), got ",
                embeddings->sizes());
  }
  TORCH_CHECK(h_lo >= 0 && h_hi >= 0, "rank_window entries must be >= 0");
}

inline void check_neighbor_table(const at::Tensor& codebook, int64_t k) {
  TORCH_CHECK(codebook.dim() == 2, "codebook must be (num_codes, dim), got ", codebook.sizes());
  check_dtype(codebook, at::kFloat, "codebook");
  const int64_t n = codebook.size(0);
  TORCH_CHECK(k >= 1 && k <= n - 1, "k must be in [1, ", n - 1, "], got ", k);
}

// Structure only: num_nodes and the parent values are checked by the kernels, which mark a bad tree in its
// outputs (depth = -code).
inline void check_build_tree(const at::Tensor& parents, const at::Tensor& num_nodes) {
  TORCH_CHECK(parents.dim() == 2, "parents must be (batch, num_nodes), got ", parents.sizes());
  check_dtype(parents, at::kLong, "parents");
  check_shape(num_nodes, {parents.size(0)}, "num_nodes");
  check_dtype(num_nodes, at::kLong, "num_nodes");
  check_same(num_nodes, parents, "num_nodes");
}

inline void check_cspd(const at::Tensor& x, const at::Tensor& mu_q, const at::Tensor& sigma_q, const at::Tensor& mu_p,
                       const at::Tensor& sigma_p, const at::Tensor& s_q, const at::Tensor& s_p,
                       const at::Tensor& u_accept, const at::Tensor& u_prop, const at::Tensor& u_ar) {
  TORCH_CHECK(x.dim() == 2, "x must be (num_tokens, dim), got ", x.sizes());
  check_dtype(x, at::kFloat, "x");
  const int64_t n = x.size(0), dim = x.size(1);
  const std::pair<const at::Tensor*, const char*> gauss[] = {{&mu_q, "mu_q"}, {&sigma_q, "sigma_q"},
                                                             {&mu_p, "mu_p"}, {&sigma_p, "sigma_p"},
                                                             {&s_q, "s_q"},   {&s_p, "s_p"}};
  for (const auto& [t, name] : gauss) {
    check_shape(*t, x.sizes(), name);
    check_dtype(*t, at::kFloat, name);
    check_same(*t, x, name);
  }
  check_shape(u_accept, {n}, "u_accept");
  TORCH_CHECK(u_prop.dim() == 3 && u_prop.size(0) == n && u_prop.size(1) >= 1 && u_prop.size(2) == dim,
              "u_prop must be (", n, ", max_tries, ", dim, "), got ", u_prop.sizes());
  check_shape(u_ar, {n, u_prop.size(1)}, "u_ar");
  for (const at::Tensor* t : {&u_accept, &u_prop, &u_ar}) {
    check_dtype(*t, at::kFloat, "uniforms");
    check_same(*t, x, "uniforms");
  }
}

}  // namespace specdec
