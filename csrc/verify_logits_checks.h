// Structural checks of verify_chain_logits / verify_tree_logits, written once for the CPU kernel and the CUDA glue
// (shapes, dtypes, devices, processing arguments, the packed method params of csrc/methods.h). Values are the
// kernels' business: they report bad rows as next_token = -code (csrc/verify_logits_math.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <utility>

#include "checks.h"

namespace specdec::logits {

// A rule's parameters decoded from the packed float[] params (methods.h), built by decode_params for every chain
// and tree op (probabilities, logits, Jacobi); the table pointers are filled by the caller from the contiguous
// tensors.
struct MethodParams {
  int64_t method = kExact;
  const int32_t* neighbors = nullptr;
  int64_t k = 0;
  LanternConfig lantern{false, 0.0};
  GsdConfig gsd{0, 0, 0.0f, 0.0f};
  TypicalConfig typical{0.0, 0.0};
  const float* embeddings = nullptr;
  int64_t emb_dim = 0;

  // The neighbour table when the rule reads one (row status checks use it), else nullptr.
  const int32_t* status_neighbors() const { return needs_neighbors(method) ? neighbors : nullptr; }
};

// Checks the code against the op (chain or tree) and the params list, then decodes every parameter the rule has.
inline MethodParams decode_params(int64_t method, c10::ArrayRef<double> params, bool chain, int64_t vocab) {
  check_method(method, params, chain);
  MethodParams mp;
  mp.method = method;
  if (method == kGsd) mp.gsd = GsdConfig::decode(params.data(), vocab);
  if (method == kLantern) mp.lantern = LanternConfig::decode(params.data());
  if (method == kTypical) mp.typical = TypicalConfig::decode(params.data());
  return mp;
}

// The table tensors of a rule, made contiguous, with their pointers set in *mp (undefined where unused).
struct MethodTables {
  at::Tensor neighbors, embeddings;
};
inline MethodTables bind_tables(MethodParams* mp, const std::optional<at::Tensor>& neighbors,
                                const std::optional<at::Tensor>& embeddings) {
  MethodTables t;
  const MethodTraits traits = method_traits(mp->method);
  if (traits.needs_neighbors && neighbors) {
    t.neighbors = neighbors->contiguous();
    mp->neighbors = t.neighbors.data_ptr<int32_t>();
    mp->k = t.neighbors.size(1);
  }
  if (traits.takes_embeddings && embeddings) {
    t.embeddings = embeddings->contiguous();
    mp->embeddings = t.embeddings.data_ptr<float>();
    mp->emb_dim = t.embeddings.size(1);
  }
  return t;
}

struct LogitsShape {
  int64_t batch, slots, vocab;
  bool cfg;
  bool draft_cfg;  // chain: draft_logits hold a doubled batch (processed with CFG)
};

inline LogitsShape check_logits(const at::Tensor& logits, std::optional<double> cfg_scale, double temperature,
                                int64_t top_k, double top_p) {
  TORCH_CHECK(logits.dim() == 3 && logits.size(1) >= 1 && logits.size(2) >= 1,
              "logits must be (batch or 2 * batch, slots, vocab), got ", logits.sizes());
  check_float(logits, "logits");
  const bool cfg = cfg_scale.has_value();
  TORCH_CHECK(!cfg || logits.size(0) % 2 == 0, "with cfg_scale, logits must hold a doubled batch, got ",
              logits.size(0), " rows");
  TORCH_CHECK(!cfg || std::isfinite(*cfg_scale), "cfg_scale must be finite");
  TORCH_CHECK(temperature >= 0.0 && std::isfinite(temperature), "temperature must be >= 0, got ", temperature);
  TORCH_CHECK(top_k >= 0, "top_k must be >= 0, got ", top_k);
  TORCH_CHECK(top_p > 0.0 && top_p <= 1.0, "top_p must be in (0, 1], got ", top_p);
  return {cfg ? logits.size(0) / 2 : logits.size(0), logits.size(1), logits.size(2), cfg, false};
}

inline void check_rows(const at::Tensor& ids, const at::Tensor& u_accept, const at::Tensor& u_sample,
                       const at::Tensor& count, int64_t batch, int64_t width, const at::Tensor& logits,
                       const char* ids_name, const char* count_name) {
  check_shape(ids, {batch, width}, ids_name);
  check_dtype(ids, at::kLong, ids_name);
  check_shape(u_accept, {batch, width}, "u_accept");
  check_dtype(u_accept, at::kFloat, "u_accept");
  check_shape(u_sample, {batch}, "u_sample");
  check_dtype(u_sample, at::kFloat, "u_sample");
  check_shape(count, {batch}, count_name);
  check_dtype(count, at::kLong, count_name);
  for (const at::Tensor* t : {&ids, &u_accept, &u_sample, &count}) check_same(*t, logits, "inputs");
}

inline void check_draft_probs(const std::optional<at::Tensor>& draft_probs, int64_t batch, int64_t rows,
                              int64_t vocab, const at::Tensor& logits) {
  if (!draft_probs) return;
  check_float(*draft_probs, "draft_probs");
  check_shape(*draft_probs, {batch, rows, vocab}, "draft_probs");
  check_same(*draft_probs, logits, "draft_probs");
}

inline void check_method_tensors(const MethodParams& mp, const std::optional<at::Tensor>& neighbors,
                                 const std::optional<at::Tensor>& embeddings, int64_t vocab,
                                 const at::Tensor& logits) {
  if (needs_neighbors(mp.method)) {
    TORCH_CHECK(neighbors.has_value(), "method ", method_name(mp.method), " needs neighbors");
    check_neighbors(*neighbors, vocab, logits);
  }
  if (method_traits(mp.method).takes_embeddings && embeddings) {
    check_dtype(*embeddings, at::kFloat, "embeddings");
    check_same(*embeddings, logits, "embeddings");
    TORCH_CHECK(embeddings->dim() == 2 && embeddings->size(0) == vocab, "embeddings must be (", vocab,
                ", dim), got ", embeddings->sizes());
  }
}

// Every structural check of verify_chain_logits; returns the shapes (slots = L + 1) and decodes the method's
// params into *mp.
inline LogitsShape check_chain_logits(const at::Tensor& logits, const std::optional<at::Tensor>& draft_logits,
                                      const std::optional<at::Tensor>& draft_probs, const at::Tensor& draft,
                                      const at::Tensor& u_accept, const at::Tensor& u_sample,
                                      const at::Tensor& num_drafts, std::optional<double> cfg_scale,
                                      double temperature, int64_t top_k, double top_p, int64_t method,
                                      c10::ArrayRef<double> params, const std::optional<at::Tensor>& neighbors,
                                      const std::optional<at::Tensor>& embeddings, MethodParams* mp) {
  LogitsShape shape = check_logits(logits, cfg_scale, temperature, top_k, top_p);
  *mp = decode_params(method, params, /*chain=*/true, shape.vocab);
  const int64_t batch = shape.batch, drafts = shape.slots - 1, vocab = shape.vocab;
  check_rows(draft, u_accept, u_sample, num_drafts, batch, drafts, logits, "draft", "num_drafts");
  TORCH_CHECK(!(draft_logits && draft_probs), "pass at most one of draft_logits and draft_probs");
  if (draft_logits) {
    const at::Tensor& d = *draft_logits;
    check_dtype(d, logits.scalar_type(), "draft_logits");
    check_same(d, logits, "draft_logits");
    shape.draft_cfg = shape.cfg && d.dim() == 3 && d.size(0) == 2 * batch;
    TORCH_CHECK(d.dim() == 3 && (d.size(0) == batch || shape.draft_cfg) && d.size(1) == drafts && d.size(2) == vocab,
                "draft_logits must be (", batch, shape.cfg ? " or 2 * batch" : "", ", ", drafts, ", ", vocab,
                "), got ", d.sizes());
  }
  check_draft_probs(draft_probs, batch, drafts, vocab, logits);
  check_method_tensors(*mp, neighbors, embeddings, vocab, logits);
  return shape;
}

// Every structural check of verify_tree_logits; returns the shapes (slots = M) and decodes the params into *mp.
inline LogitsShape check_tree_logits(const at::Tensor& logits, const std::optional<at::Tensor>& draft_probs,
                                     const at::Tensor& tree_tokens, const at::Tensor& parents,
                                     const at::Tensor& u_accept, const at::Tensor& u_sample,
                                     const at::Tensor& num_nodes, std::optional<double> cfg_scale, double temperature,
                                     int64_t top_k, double top_p, int64_t method, c10::ArrayRef<double> params,
                                     const std::optional<at::Tensor>& neighbors, MethodParams* mp) {
  const LogitsShape shape = check_logits(logits, cfg_scale, temperature, top_k, top_p);
  *mp = decode_params(method, params, /*chain=*/false, shape.vocab);
  check_rows(tree_tokens, u_accept, u_sample, num_nodes, shape.batch, shape.slots, logits, "tree_tokens",
             "num_nodes");
  check_shape(parents, {shape.batch, shape.slots}, "parents");
  check_dtype(parents, at::kLong, "parents");
  check_same(parents, logits, "parents");
  check_draft_probs(draft_probs, shape.batch, shape.slots, shape.vocab, logits);
  check_method_tensors(*mp, neighbors, std::nullopt, shape.vocab, logits);
  return shape;
}

// The checks jacobi_step adds to check_chain_logits (which it runs with q as draft_probs): q float32, the refresh's
// uniforms u_draft / u_keep / u_init (B, L) float32, update (B,) bool, all on the logits' device.
inline void check_jacobi_step(const std::optional<at::Tensor>& q, const at::Tensor& u_draft,
                              const std::optional<at::Tensor>& u_keep, const std::optional<at::Tensor>& u_init,
                              const at::Tensor& update, const LogitsShape& shape, const at::Tensor& logits) {
  const int64_t batch = shape.batch, width = shape.slots - 1;
  TORCH_CHECK(!q || q->scalar_type() == at::kFloat, "q must be float32, got ", q->scalar_type());
  const std::pair<const at::Tensor*, const char*> uniforms[] = {
      {&u_draft, "u_draft"}, {u_keep ? &*u_keep : nullptr, "u_keep"}, {u_init ? &*u_init : nullptr, "u_init"}};
  for (const auto& [u, name] : uniforms) {
    if (u == nullptr) continue;
    check_shape(*u, {batch, width}, name);
    check_dtype(*u, at::kFloat, name);
    check_same(*u, logits, name);
  }
  check_shape(update, {batch}, "update");
  check_dtype(update, at::kBool, "update");
  check_same(update, logits, "update");
}

}  // namespace specdec::logits
