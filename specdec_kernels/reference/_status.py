"""Row status codes of the reference ops (docs/ALGORITHMS.md §3.8; codes in ``specdec_kernels._methods``).

A row whose inputs break a structural precondition is not verified: every backend reports it as
``next_token[b] = -code`` (``accept_len[b] = 0``; tree: ``accepted_nodes[b] = -1``). Codes 1-5 are checked per row
before any verification, in this order, first failure wins; code 6 is found on the values the walk reads (the
tested entries p(x), q(x) and the whole row sampled from).
"""

import math
from typing import Optional, Sequence, Tuple

import torch

from .._methods import (
    ROW_BAD_COUNT,
    ROW_BAD_ID,
    ROW_BAD_NEIGHBOR,
    ROW_BAD_PARENTS,
    ROW_BAD_PROB,
    ROW_BAD_UNIFORM,
)


def bad_prob(t: torch.Tensor) -> torch.Tensor:
    """True where a probability is NaN, inf or negative."""
    return ~((t >= 0) & (t < math.inf))


def bad_uniform(t: torch.Tensor) -> torch.Tensor:
    """True where a uniform lies outside [0, 1] (NaN included). 1.0 is valid: every test is strict in u, so it
    acts as the supremum of [0, 1) (docs/ALGORITHMS.md §3.1)."""
    return ~((t >= 0) & (t <= 1))


def first_code(batch: int, device, conditions: Sequence[Tuple[int, torch.Tensor]]) -> torch.Tensor:
    """int64 ``[batch]``: the first code (in the given order) whose condition holds for the row, else 0."""
    status = torch.zeros(batch, dtype=torch.int64, device=device)
    for code, bad in reversed(conditions):
        status = torch.where(bad, code, status)
    return status


def bad_neighbors(neighbors: torch.Tensor, tokens: torch.Tensor, use: torch.Tensor, vocab: int) -> torch.Tensor:
    """``use``-masked ``[B, N]`` tokens (already in [0, V) where used) -> per row: does the table row of a used
    token hold an id outside [0, V) or the token itself (code 4)."""
    safe = torch.where(use, tokens, 0).long()
    rows = neighbors[safe].long()  # (B, N, K)
    bad = (rows < 0) | (rows >= vocab) | (rows == safe[..., None])
    return (bad.any(-1) & use).any(-1)


def parents_malformed(parents: torch.Tensor, num_nodes: torch.Tensor) -> torch.Tensor:
    """Per row: ``parents[b, 0] != -1`` or a valid node n > 0 whose parent is outside [0, n) (code 3). Rows whose
    ``num_nodes`` is outside [1, M] are judged on their first ``clamp(num_nodes, 1, M)`` nodes (code 1 wins)."""
    m = parents.shape[1]
    node = torch.arange(m, device=parents.device)
    valid = node < num_nodes.clamp(1, m)[:, None]
    ok_edge = (parents >= 0) & (parents < node)
    bad_edge = (~ok_edge & valid & (node > 0)).any(-1)
    return (parents[:, 0] != -1) | bad_edge


def chain_status(p, q, draft, u_accept, u_sample, num_drafts, neighbors: Optional[torch.Tensor]) -> torch.Tensor:
    """Codes 1, 2, 4, 5 of every chain row (``neighbors`` given for LANTERN only)."""
    batch, slots, vocab = p.shape
    drafts = slots - 1
    n = num_drafts.long()
    used = torch.arange(drafts, device=p.device) < n.clamp(0, drafts)[:, None]
    bad_id = ((draft < 0) | (draft >= vocab)) & used
    conditions = [(ROW_BAD_COUNT, (n < 0) | (n > drafts)), (ROW_BAD_ID, bad_id.any(-1))]
    if neighbors is not None:
        conditions.append((ROW_BAD_NEIGHBOR, bad_neighbors(neighbors, draft, used & ~bad_id, vocab)))
    bad_u = (bad_uniform(u_accept) & used).any(-1) | bad_uniform(u_sample)
    conditions.append((ROW_BAD_UNIFORM, bad_u))
    return first_code(batch, p.device, conditions)


def tree_status(p, tree_tokens, parents, u_accept, u_sample, num_nodes, neighbors: Optional[torch.Tensor]
                ) -> torch.Tensor:
    """Codes 1-5 of every tree row; the valid nodes are n < num_nodes[b] (the root included)."""
    batch, m, vocab = p.shape
    n = num_nodes.long()
    valid = torch.arange(m, device=p.device) < n.clamp(1, m)[:, None]
    bad_id = ((tree_tokens < 0) | (tree_tokens >= vocab)) & valid
    conditions = [
        (ROW_BAD_COUNT, (n < 1) | (n > m)),
        (ROW_BAD_ID, bad_id.any(-1)),
        (ROW_BAD_PARENTS, parents_malformed(parents, n)),
    ]
    if neighbors is not None:
        conditions.append((ROW_BAD_NEIGHBOR, bad_neighbors(neighbors, tree_tokens, valid & ~bad_id, vocab)))
    bad_u = (bad_uniform(u_accept) & valid).any(-1) | bad_uniform(u_sample)
    conditions.append((ROW_BAD_UNIFORM, bad_u))
    return first_code(batch, p.device, conditions)


__all__ = ["ROW_BAD_PROB", "bad_prob", "bad_uniform", "chain_status", "first_code", "parents_malformed",
           "tree_status"]
