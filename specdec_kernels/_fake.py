"""Fake (meta) kernels: output shapes and dtypes only, from the same structural checks as the wrappers,
so the registered ops trace under torch.compile and pass torch.library.opcheck."""

import torch

from . import _validation as v
from ._constants import NAMESPACE


def _register():
    def fake(name):
        return torch.library.register_fake(f"{NAMESPACE}::{name}")

    @fake("neighbor_table")
    def _(codebook, k, normalize):
        return codebook.new_empty((codebook.shape[0], k), dtype=torch.int32)

    @fake("lantern_relaxed_mass")
    def _(p, x, neighbors, delta, lam):
        v.lantern_budget(delta, lam)
        rows = p.shape[0]
        return p.new_empty((rows,), dtype=torch.float32), p.new_empty((rows,), dtype=torch.int32)

    @fake("gsd_group_mass")
    def _(p, q, x, embeddings, h_lo, h_hi, p_thr, d_thr):
        rows = p.shape[0]
        return p.new_empty((rows,), dtype=torch.float32), p.new_empty((rows,), dtype=torch.float32)

    @fake("verify_chain")
    def _(p, q, draft, u_accept, u_sample, num_drafts, method, neighbors, embeddings, params):
        batch, _, _ = v.chain_shapes(p, q, draft, u_accept, u_sample, num_drafts)
        return draft.new_empty((batch,)), draft.new_empty((batch,))

    @fake("build_tree")
    def _(parents, num_nodes):
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

    @fake("verify_tree")
    def _(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, method, neighbors, params):
        batch, nodes, _ = v.tree_shapes(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes)
        return (
            tree_tokens.new_empty((batch, max(nodes - 1, 0))),
            tree_tokens.new_empty((batch,)),
            tree_tokens.new_empty((batch,)),
        )

    @fake("verify_chain_logits")
    def _(logits, draft_logits, draft_probs, draft, u_accept, u_sample, num_drafts, cfg_scale, temperature, top_k,
          top_p, method, neighbors, embeddings, params):
        batch = logits.shape[0] // 2 if cfg_scale is not None else logits.shape[0]
        return draft.new_empty((batch,)), draft.new_empty((batch,))

    @fake("verify_tree_logits")
    def _(logits, draft_probs, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg_scale, temperature, top_k,
          top_p, method, neighbors, params):
        batch = logits.shape[0] // 2 if cfg_scale is not None else logits.shape[0]
        nodes = logits.shape[1]
        return (
            tree_tokens.new_empty((batch, max(nodes - 1, 0))),
            tree_tokens.new_empty((batch,)),
            tree_tokens.new_empty((batch,)),
        )

    @fake("cspd_verify")
    def _(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar, inner_temperature):
        n, _, _ = v.cspd_shapes(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar)
        return x.new_empty(x.shape), x.new_empty((n,), dtype=torch.bool), x.new_empty((n,), dtype=torch.bool)
