"""Fake (meta) kernels: output shapes and dtypes only, from the same structural checks as the wrappers,
so the registered ops (the C++ ops and the Triton backend's ops, which share schemas) trace under
torch.compile and pass torch.library.opcheck."""

import torch

from . import _methods
from . import _validation as v
from ._constants import NAMESPACE, TRITON_NAMESPACE


def _method_params(op: str, method, params):
    """The packed ``params`` must fit the method (the table in ``_methods.py``), as the kernels check."""
    chosen = _methods.BY_CODE.get(method)
    if chosen is None or not (chosen.chain if op == "verify_chain" else chosen.tree):
        raise ValueError(f"{op}: unknown method code {method!r}")
    _methods.unpack_params(chosen, params)


def neighbor_table(codebook, k, normalize):
    return codebook.new_empty((codebook.shape[0], k), dtype=torch.int32)


def lantern_relaxed_mass(p, x, neighbors, delta, lam):
    v.lantern_budget(delta, lam)
    rows = p.shape[0]
    return p.new_empty((rows,), dtype=torch.float32), p.new_empty((rows,), dtype=torch.int32)


def gsd_group_mass(p, q, x, embeddings, h_lo, h_hi, p_thr, d_thr):
    rows = p.shape[0]
    return p.new_empty((rows,), dtype=torch.float32), p.new_empty((rows,), dtype=torch.float32)


def verify_chain(p, q, draft, u_accept, u_sample, num_drafts, method, neighbors, embeddings, params):
    _method_params("verify_chain", method, params)
    batch, _, _ = v.chain_shapes(p, q, draft, u_accept, u_sample, num_drafts)
    return draft.new_empty((batch,)), draft.new_empty((batch,))


def build_tree(parents, num_nodes):
    v.tree_parent_shapes(parents, num_nodes)
    batch, m = parents.shape
    ctx = torch.library.get_ctx()
    num_paths = ctx.new_dynamic_size()
    path_len = ctx.new_dynamic_size()
    return (
        parents.new_empty((batch, m, m), dtype=torch.bool),
        parents.new_empty((batch, m)),
        parents.new_empty((batch, num_paths, path_len)),
    )


def verify_tree(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, method, neighbors, params):
    _method_params("verify_tree", method, params)
    batch, nodes, _ = v.tree_shapes(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes)
    return (
        tree_tokens.new_empty((batch, max(nodes - 1, 0))),
        tree_tokens.new_empty((batch,)),
        tree_tokens.new_empty((batch,)),
    )


def cspd_verify(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar, inner_temperature):
    n, _, _ = v.cspd_shapes(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar)
    return (x.new_empty(x.shape), x.new_empty((n,), dtype=torch.bool), x.new_empty((n,), dtype=torch.bool),
            x.new_empty((n,), dtype=torch.int32))


def verify_chain_logits(logits, draft_logits, draft_probs, draft, u_accept, u_sample, num_drafts, cfg_scale,
                        temperature, top_k, top_p, method, neighbors, embeddings, params):
    _method_params("verify_chain", method, params)
    batch = draft.shape[0]  # the logits hold batch or 2 * batch (CFG) rows
    return draft.new_empty((batch,)), draft.new_empty((batch,))


def verify_tree_logits(logits, draft_probs, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg_scale,
                       temperature, top_k, top_p, method, neighbors, params):
    _method_params("verify_tree", method, params)
    batch, nodes = tree_tokens.shape
    return (
        tree_tokens.new_empty((batch, max(nodes - 1, 0))),
        tree_tokens.new_empty((batch,)),
        tree_tokens.new_empty((batch,)),
    )


def jacobi_step(logits, window, q, u_accept, u_sample, u_draft, u_keep, u_init, num_drafts, update, cfg_scale,
                temperature, top_k, top_p, method, neighbors, embeddings, params):
    _method_params("verify_chain", method, params)
    batch, width = window.shape
    vocab = logits.shape[-1]
    return (window.new_empty((batch,)), window.new_empty((batch,)), window.new_empty((batch, width)),
            logits.new_empty((batch, width, vocab), dtype=torch.float32), window.new_empty((batch,)))


#: Ops only the C++ extension defines so far (the Triton backend gains them as its kernels land).
EXTENSION_ONLY_FAKES = {}


#: Op name -> its fake kernel (one per schema, shared by both namespaces).
FAKES = {
    "neighbor_table": neighbor_table,
    "lantern_relaxed_mass": lantern_relaxed_mass,
    "gsd_group_mass": gsd_group_mass,
    "verify_chain": verify_chain,
    "build_tree": build_tree,
    "verify_tree": verify_tree,
    "cspd_verify": cspd_verify,
    "verify_chain_logits": verify_chain_logits,
    "verify_tree_logits": verify_tree_logits,
    "jacobi_step": jacobi_step,
}


def _register(namespace: str = NAMESPACE):
    """Register every fake for the ops of ``namespace`` (the C++ extension's, or ``TRITON_NAMESPACE``)."""
    fakes = dict(FAKES, **EXTENSION_ONLY_FAKES) if namespace == NAMESPACE else FAKES
    for name, fake in fakes.items():
        torch.library.register_fake(f"{namespace}::{name}")(fake)


def _register_triton():
    _register(TRITON_NAMESPACE)
