"""Static draft trees (Medusa / EAGLE-1 choice lists) with siblings sampled without replacement from the head's
q, verified exactly by ``verify_tree`` with explicit q (SpecInfer's rule, docs/ALGORITHMS.md §3.5)."""

from typing import Optional, Sequence, Tuple

import torch

from ..defaults import STATIC_MAX_DEPTH, STATIC_MAX_RANK_SUM
from ..feed import attention_mask
from ..rng import LANE_DRAFT
from ..sampling import sample_without_replacement
from ..sizing import StaticTreeStats
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
        self.choices = sorted({tuple(c) for c in choices}, key=lambda c: (len(c), c))
        self._trees = {}  # size -> (tree, ancestor matrix, explored-tree ids of its nodes): built once per size
        self._plans = {}  # (size, device) -> per-level index tensors of draft_tree
        self.apply_size((max(len(c) for c in self.choices), max(sum(c) for c in self.choices)))

    # -- size="auto" (specdec.decoding.sizing): depth and rank sum of the choices kept ----------------------
    def size_label(self) -> str:
        depth, rank_sum = self.size
        if self.num_nodes == 1:
            return "no drafts (AR steps)"
        return f"{self.num_nodes} nodes, depth {depth}, rank sum {rank_sum}"

    def apply_size(self, size) -> None:
        """Keep the choices of length <= depth and rank sum <= rank_sum (ancestor-closed and sibling-contiguous,
        so a valid static tree and a subtree of the full one)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._trees:
            kept = [c for c in self.choices if len(c) <= size[0] and sum(c) <= size[1]]
            full = {(): 0, **{c: i + 1 for i, c in enumerate(self.choices)}}
            tree = StaticTree(kept)
            ids = torch.tensor([0] + [full[c] for c in sorted(kept, key=lambda c: (len(c), c))])
            self._trees[size] = (tree, _ancestor_matrix(tree.parents), ids)
        self.size = size
        self.tree, self._ancestors, self._explore_ids = self._trees[size]
        self.num_nodes = self.tree.num_nodes

    def explore_size(self):
        return (max(len(c) for c in self.choices), max(sum(c) for c in self.choices))

    def new_size_stats(self, explore):
        return StaticTreeStats(len(self.choices) + 1)

    def size_candidates(self, stats):
        out = [(0, 0)]  # a lone root (plain AR) where drafting cannot pay
        for depth in range(1, max(len(c) for c in self.choices) + 1):
            for rank_sum in range(0, max(sum(c) for c in self.choices) + 1):
                ids = self._member((depth, rank_sum))
                if ids.numel() and stats.observed(ids):
                    out.append((depth, rank_sum))
        return out

    def _member(self, size) -> torch.Tensor:
        return torch.tensor([i + 1 for i, c in enumerate(self.choices) if len(c) <= size[0] and sum(c) <= size[1]],
                            dtype=torch.int64)

    def expected_accepted(self, stats, size) -> float:
        return stats.expected_accepted(self._member(size))

    def step_seconds(self, calibration, rows, size, stats) -> float:
        kept = [c for c in self.choices if len(c) <= size[0] and sum(c) <= size[1]]
        if not kept:
            return calibration.cost("target", rows, 1)
        parents_per_level = [len({c[:-1] for c in kept if len(c) == level + 1}) for level in range(1, size[0])]
        catch_up = 1.0 + self.expected_accepted(stats, size)
        return (calibration.cost("target", rows, len(kept) + 1) + calibration.cost("head", rows, catch_up)
                + sum(calibration.cost("head", rows, n) for n in parents_per_level))

    def observe_size(self, out, active) -> None:
        ids = self._explore_ids.to(out.accepted_nodes.device)
        nodes = out.accepted_nodes
        path = torch.where(nodes >= 0, ids[nodes.clamp_min(0)], -1)
        self.sizer.stats.observe(path, active, ids[1:])

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
        timer = ctx.timer
        for level, plan in enumerate(self._level_plan(device)):
            par_ids = plan["par_ids"]
            if level > 0:  # run the head on this level's parents to get their q
                with timer.phase("tree_masks"):
                    npar = par_ids.shape[0]
                    slots = (n0 - 1)[:, None] + par_ids[None, :]
                    positions = (n0 + level)[:, None].expand(batch, npar)
                    valid = active[:, None].expand(batch, npar)
                    anc = torch.zeros(batch, npar, self.head_slots, dtype=torch.bool, device=device)
                    anc_slots = (n0 - 1)[:, None, None] + plan["node_range"][None, None, :]
                    anc.scatter_(2, anc_slots.expand(batch, npar, m).clamp_max(self.head_slots - 1),
                                 plan["ancestors"][None].expand(batch, -1, -1))
                    mask = attention_mask(slots, valid, n0, self.head_slots, intra=plan["eye"].expand(batch, -1, -1),
                                          extra=anc)
                hidden = feats[:, plan["parents_of_par"]]
                logits, out = self.head_forward(ctx, tokens[:, par_ids], hidden, positions, slots, valid, mask)
                feats[:, par_ids] = out
                with timer.phase("logits"):
                    q[:, par_ids] = ctx.process(logits)
            with timer.phase("draft"):
                width = plan["lanes"].shape[1]
                lanes = u[:, plan["lanes"]]  # (batch, npar, width): node c's draw uses lane DRAFT + c
                drawn = sample_without_replacement(q[:, par_ids].reshape(-1, vocab), lanes.reshape(-1, width),
                                                   validate=ctx.validate).view(batch, -1)
                tokens[:, plan["children"]] = drawn[:, plan["drawn_index"]]
        parents = tree.parents.to(device)[1:].expand(batch, m - 1)
        depth = tree.depth.to(device)[1:].expand(batch, m - 1)
        return tokens[:, 1:], parents.clone(), depth.clone(), q


    def _level_plan(self, device) -> list:
        """Per level, the index tensors of :meth:`draft_tree` on ``device``, built once per tree and device (no
        host-to-device copies or boolean indexing inside a step)."""
        key = (self.size, str(device))
        plans = self._plans.get(key)
        if plans is None:
            tree, m = self.tree, self.tree.num_nodes
            plans = []
            for par_ids, child_ids in tree.levels:
                real = child_ids.reshape(-1) >= 0
                plans.append({k: v.to(device) for k, v in {
                    "par_ids": par_ids, "parents_of_par": tree.parents[par_ids],
                    "ancestors": self._ancestors[par_ids], "eye": torch.eye(len(par_ids), dtype=torch.bool)[None],
                    "node_range": torch.arange(m), "lanes": child_ids.clamp_min(0),
                    "children": child_ids.reshape(-1)[real], "drawn_index": real.nonzero()[:, 0]}.items()})
            self._plans[key] = plans
        return plans


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
