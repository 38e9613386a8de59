"""Draft-tree construction helpers: EAGLE-2's dynamic top-K selection and static choice lists
(docs/ALGORITHMS.md §2.5, 3.5). Pure tensor code, batched over rows, no host syncs."""

from itertools import product
from typing import List, Sequence, Tuple

import torch


def select_dynamic_tree(pool_tokens, pool_scores, pool_parent_gen, pool_depth, total_nodes: int):
    """Keep the ``total_nodes - 1`` best pooled candidates and return them as a tree.

    Parameters
    ----------
    pool_* : ``(batch, P)``; candidates in generation order (a parent's generation index is always smaller
        than its children's), scores = cumulative draft log-probabilities, ``pool_parent_gen = -1`` for children
        of the root, ``pool_depth`` = depth below the root (>= 1).

    Returns
    -------
    tokens, parents, depth : ``(batch, total_nodes - 1)`` for nodes 1 .. total_nodes - 1 (node 0 is the root),
        ordered by generation index, hence topologically and by non-decreasing depth.

    Ties in score go to the lower generation index (stable sort), so a selected node's parent, whose score is
    never lower and whose index is lower, is always selected too.
    """
    order = torch.sort(-pool_scores, dim=1, stable=True).indices[:, : total_nodes - 1]
    selected = torch.sort(order, dim=1).values
    parent_gen = pool_parent_gen.gather(1, selected)
    parent_node = torch.searchsorted(selected, parent_gen.clamp_min(0)) + 1
    parents = torch.where(parent_gen < 0, 0, parent_node)
    return pool_tokens.gather(1, selected), parents, pool_depth.gather(1, selected)


def rank_sum_choices(max_depth: int, max_rank_sum: int) -> List[Tuple[int, ...]]:
    """Static tree as Medusa-style choices: every rank path of length <= ``max_depth`` whose ranks sum to at most
    ``max_rank_sum`` (rank j = the j-th draft drawn at that parent)."""
    out = []
    for depth in range(1, max_depth + 1):
        for path in product(range(max_rank_sum + 1), repeat=depth):
            if sum(path) <= max_rank_sum:
                out.append(path)
    return sorted(out, key=lambda c: (len(c), c))


class StaticTree:
    """A static tree from choices (sorted by length then lexicographically, as Medusa / EAGLE-1 do).

    Attributes: ``parents`` ``(M,)`` (root first, -1), ``depth`` ``(M,)``, ``rank`` ``(M,)``, and per level
    ``levels[l] = (parent_ids (np,), child_ids (np, max_children) -1 padded)`` for drawing level l + 1.
    """

    def __init__(self, choices: Sequence[Tuple[int, ...]]):
        choices = sorted({tuple(c) for c in choices}, key=lambda c: (len(c), c))
        index = {(): 0}
        parents, depth, rank = [-1], [0], [0]
        for c in choices:
            if c[:-1] not in index:
                raise ValueError(f"choice {c} has no parent {c[:-1]} in the list")
            index[c] = len(parents)
            parents.append(index[c[:-1]])
            depth.append(len(c))
            rank.append(c[-1])
        for c in choices:  # siblings must be ranks 0..m-1 so they are the first m draws without replacement
            if c[-1] > 0 and c[:-1] + (c[-1] - 1,) not in index:
                raise ValueError(f"choice {c} skips rank {c[-1] - 1}")
        self.parents = torch.tensor(parents)
        self.depth = torch.tensor(depth)
        self.rank = torch.tensor(rank)
        self.num_nodes = len(parents)
        self.max_depth = int(self.depth.max())
        self.levels = []
        for level in range(self.max_depth):
            kids = [n for n in range(self.num_nodes) if depth[n] == level + 1]
            par_ids = sorted({parents[n] for n in kids})
            width = max(sum(1 for n in kids if parents[n] == p) for p in par_ids)
            child_ids = torch.full((len(par_ids), width), -1, dtype=torch.int64)
            for row, p in enumerate(par_ids):
                ids = sorted((n for n in kids if parents[n] == p), key=lambda n: rank[n])
                child_ids[row, : len(ids)] = torch.tensor(ids)
            self.levels.append((torch.tensor(par_ids), child_ids))
