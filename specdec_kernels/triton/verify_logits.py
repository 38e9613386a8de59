"""Triton logits -> verification (``verify_chain_logits`` / ``verify_tree_logits`` schemas).

Not a second implementation: these launchers run the chain and tree kernels of ``verify_chain.py`` /
``verify_tree.py`` with a logits row source (``_rows.py``), so each logits row is processed (CFG, temperature,
top-k, top-p, softmax) inside the walk, only where the walk reads it, and no ``[B, L+1, V]`` probability tensor is
formed. Every chain rule works from logits; row codes are the walks' own.
"""

from . import _rows as rows
from .verify_chain import check_chain_method, launch_chain
from .verify_tree import check_tree_method, launch_tree


def verify_chain_logits_triton(logits, draft_logits, draft_probs, draft, u_accept, u_sample, num_drafts, cfg_scale,
                               temperature, top_k, top_p, method, neighbors, embeddings, params):
    """Launcher with the ``verify_chain_logits`` op schema; returns ``(accept_len, next_token)`` [B] int64. q is
    ``draft_probs``, or ``draft_logits`` processed like the target (with CFG only when they hold a doubled batch),
    or None (one-hot drafts)."""
    check_chain_method("verify_chain_logits", method)
    batch = draft.shape[0]
    cfg = cfg_scale is not None
    if draft_logits is not None:
        q = rows.Source(draft_logits, logits=True, cfg=cfg and draft_logits.shape[0] == 2 * batch)
    elif draft_probs is not None:
        q = rows.Source(draft_probs)
    else:
        q = None
    vocab = logits.shape[-1]
    return launch_chain(rows.Source(logits, logits=True, cfg=cfg), q, draft, u_accept, u_sample, num_drafts, method,
                        neighbors, embeddings, params,
                        processing=rows.Processing(cfg_scale, temperature, top_k, top_p, vocab))


def verify_tree_logits_triton(logits, draft_probs, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg_scale,
                              temperature, top_k, top_p, method, neighbors, params):
    """Launcher with the ``verify_tree_logits`` op schema; returns ``(accepted_nodes, accept_len, next_token)``."""
    check_tree_method("verify_tree_logits", method)
    vocab = logits.shape[-1]
    return launch_tree(rows.Source(logits, logits=True, cfg=cfg_scale is not None), draft_probs, tree_tokens, parents,
                       u_accept, u_sample, num_nodes, method, neighbors, params,
                       processing=rows.Processing(cfg_scale, temperature, top_k, top_p, vocab))
