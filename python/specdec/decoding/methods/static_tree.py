"""Static draft trees (Medusa / EAGLE-1 choice lists) with siblings sampled without replacement from the head's
q, verified exactly by ``verify_tree`` with explicit q (SpecInfer's rule, docs/ALGORITHMS.md §3.5)."""

from typing import Optional, Sequence, Tuple

import torch

from ..defaults import STATIC_MAX_DEPTH, STATIC_MAX_RANK_SUM
from ..feed import attention_mask
from ..rng import LANE_DRAFT
from ..sampling import sample_without_replacement
from ..trees import StaticTree, rank_sum_choices
from .tree import TreeMethod


class StaticTreeMethod(TreeMethod):
    """Exact static tree. Level by level, the head runs on the nodes that have children (each sees the
    committed prefix and its ancestors); a node's children are the first draws without replacement from its q."""

    name = "static"

    def __init__(self, head, *, choices: Optional[Sequence[Tuple[int, ...]]] = None):
        super().__init__(head)
        if choices is None:
            choices = rank_sum_choices(STATIC_MAX_DEPTH, STATIC_MAX_RANK_SUM)
        self.tree = StaticTree(choices)
        self.num_nodes = self.tree.num_nodes
        self._ancestors = _ancestor_matrix(self.tree.parents)

    def head_scratch(self) -> int:
        return self.num_nodes

    def draft_tree(self, ctx, root_feature, q_root):
        state, tree = ctx.state, self.tree
        batch, device = state.batch_size, state.device
        m, vocab = tree.num_nodes, q_root.shape[-1]
        n0, active = state.n_gen, state.active
        tokens = torch.zeros(batch, m, dtype=torch.int64, device=device)
        q = torch.full((batch, m, vocab), 1.0 / vocab, device=device)  # leaves keep a harmless uniform row
        q[:, 0] = q_root
        feats = root_feature.new_zeros(root_feature.shape[0], m, root_feature.shape[-1])
        feats[:, 0] = root_feature
        u = ctx.uniform(LANE_DRAFT, m)
        anc_nodes = self._ancestors.to(device)  # (m, m): strict ancestors below the root
        for level, (par_ids, child_ids) in enumerate(tree.levels):
            par_ids, child_ids = par_ids.to(device), child_ids.to(device)
            if level > 0:  # run the head on this level's parents to get their q
                npar = par_ids.shape[0]
                slots = (n0 - 1)[:, None] + par_ids[None, :]
                positions = (n0 + level)[:, None].expand(batch, npar)
                valid = active[:, None].expand(batch, npar)
                anc = torch.zeros(batch, npar, self.head_slots, dtype=torch.bool, device=device)
                anc_slots = (n0 - 1)[:, None, None] + torch.arange(m, device=device)[None, None, :]
                anc.scatter_(2, anc_slots.expand(batch, npar, m).clamp_max(self.head_slots - 1),
                             anc_nodes[par_ids][None].expand(batch, -1, -1))
                eye = torch.eye(npar, dtype=torch.bool, device=device).expand(batch, npar, npar)
                mask = attention_mask(slots, valid, n0, self.head_slots, intra=eye, extra=anc)
                hidden = feats[:, tree.parents[par_ids].to(device)]
                logits, out = self.head_forward(ctx, tokens[:, par_ids], hidden, positions, slots, valid, mask)
                feats[:, par_ids] = out
                q[:, par_ids] = ctx.process(logits)
            width = child_ids.shape[1]
            lanes = u[:, child_ids.clamp_min(0)]  # (batch, npar, width): node c's draw uses lane DRAFT + c
            drawn = sample_without_replacement(q[:, par_ids].reshape(-1, vocab), lanes.reshape(-1, width),
                                               validate=ctx.validate).view(batch, -1, width)
            real = child_ids >= 0
            tokens[:, child_ids[real]] = drawn[:, real]
        parents = tree.parents.to(device)[1:].expand(batch, m - 1)
        depth = tree.depth.to(device)[1:].expand(batch, m - 1)
        return tokens[:, 1:], parents.clone(), depth.clone(), q


def _ancestor_matrix(parents: torch.Tensor) -> torch.Tensor:
    """``a[i, j]`` iff node j is a strict ancestor of node i other than the root (the root's head K/V is part
    of the committed prefix)."""
    m = parents.shape[0]
    out = torch.zeros(m, m, dtype=torch.bool)
    for i in range(1, m):
        j = int(parents[i])
        while j > 0:
            out[i, j] = True
            j = int(parents[j])
    return out
