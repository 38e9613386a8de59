// The one place where every op schema of specdec_kernels is declared. Backends attach through
// TORCH_LIBRARY_IMPL(specdec_kernels, CPU|CUDA, m) in their own files; fake kernels live in
// specdec_kernels/_fake.py. Importing the compiled module specdec_kernels._C runs these registrations.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "methods.h"

TORCH_LIBRARY(specdec_kernels, m) {
  m.def("neighbor_table(Tensor codebook, int k, bool normalize) -> Tensor");
  m.def("lantern_relaxed_mass(Tensor p, Tensor x, Tensor neighbors, float? delta, float? lam) -> (Tensor, Tensor)");
  m.def(
      "gsd_group_mass(Tensor p, Tensor? q, Tensor x, Tensor? embeddings, int h_lo, int h_hi, float p_thr, "
      "float d_thr) -> (Tensor, Tensor)");
  // verify_chain / verify_tree: method codes and the packed `params` layout per method in methods.h.
  m.def(
      "verify_chain(Tensor p, Tensor? q, Tensor draft, Tensor u_accept, Tensor u_sample, Tensor num_drafts, "
      "int method, Tensor? neighbors, Tensor? embeddings, float[] params) -> (Tensor, Tensor)");
  m.def("build_tree(Tensor parents, Tensor num_nodes) -> (Tensor, Tensor, Tensor)");
  m.def(
      "verify_tree(Tensor p, Tensor? q, Tensor tree_tokens, Tensor parents, Tensor u_accept, Tensor u_sample, "
      "Tensor num_nodes, int method, Tensor? neighbors, float[] params) -> (Tensor, Tensor, Tensor)");
  // cspd_verify: (tokens, accepted, fallback, status); status[i] = 0, or -code for a row not verified.
  m.def(
      "cspd_verify(Tensor x, Tensor mu_q, Tensor sigma_q, Tensor mu_p, Tensor sigma_p, Tensor s_q, Tensor s_p, "
      "Tensor u_accept, Tensor u_prop, Tensor u_ar, float inner_temperature) -> (Tensor, Tensor, Tensor, Tensor)");
  // Fused logits -> verification: raw logits (a doubled batch, cond rows first, with cfg_scale) processed per row.
  m.def(
      "verify_chain_logits(Tensor logits, Tensor? draft_logits, Tensor? draft_probs, Tensor draft, Tensor u_accept, "
      "Tensor u_sample, Tensor num_drafts, float? cfg_scale, float temperature, int top_k, float top_p, int method, "
      "Tensor? neighbors, Tensor? embeddings, float[] params) -> (Tensor, Tensor)");
  m.def(
      "verify_tree_logits(Tensor logits, Tensor? draft_probs, Tensor tree_tokens, Tensor parents, Tensor u_accept, "
      "Tensor u_sample, Tensor num_nodes, float? cfg_scale, float temperature, int top_k, float top_p, int method, "
      "Tensor? neighbors, float[] params) -> (Tensor, Tensor, Tensor)");
  // One Jacobi step from raw logits: verify_chain_logits of the window, then the Jacobi refresh of the drafts
  // after the accepted prefix from the same processed rows (independent or coupled draws; random inits).
  m.def(
      "jacobi_step(Tensor logits, Tensor window, Tensor? q, Tensor u_accept, Tensor u_sample, Tensor u_draft, "
      "Tensor? u_keep, Tensor? u_init, Tensor num_drafts, Tensor update, float? cfg_scale, float temperature, "
      "int top_k, float top_p, int method, Tensor? neighbors, Tensor? embeddings, float[] params) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The rule table of this build (methods.h): name and traits of a method code, for the cross-check with Python.
  m.def("method_info(int method) -> (str, int[])", [](int64_t method) {
    const specdec::MethodTraits t = specdec::method_traits(method);
    return std::make_tuple(std::string(specdec::method_name(method)),
                           std::vector<int64_t>{t.known, t.chain, t.tree, t.num_params, t.reads_whole_row,
                                                t.uses_uniform, t.needs_neighbors, t.takes_embeddings,
                                                static_cast<int64_t>(t.residual)});
  });
}

// A module with no functions: it exists so that `import specdec_kernels._C` loads this library.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
