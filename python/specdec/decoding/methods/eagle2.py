"""EAGLE-2 dynamic draft trees (arXiv 2406.16858; docs/ALGORITHMS.md §2.5) verified exactly by recursive rejection
(``verify_tree``, q = None: deterministic top-K candidates)."""

import torch

from ..defaults import EAGLE_DEPTH, EAGLE_TOP_K, EAGLE_TOTAL_TOKENS
from ..feed import attention_mask
from ..sizing import DynamicTreeStats
from ..trees import select_dynamic_tree
from .tree import TreeMethod


class Eagle2(TreeMethod):
    """Dynamic tree from an EAGLE-style draft head.

    Level 0: the head's top-``top_k`` tokens at the root (score = log q). Then ``depth`` rounds: the head runs on
    the ``top_k`` frontier nodes (each sees the committed prefix and its own ancestors), each proposes its
    top-``top_k`` children scored by cumulative log q, and the global top-``top_k`` form the next frontier.
    All ``top_k + depth * top_k**2`` candidates are pooled and the best ``total_tokens - 1`` kept (ties by
    generation index), giving ``total_tokens`` nodes with the root.
    """

    name = "eagle2"

    def __init__(self, head, *, total_tokens: int = EAGLE_TOTAL_TOKENS, depth: int = EAGLE_DEPTH,
                 top_k: int = EAGLE_TOP_K):
        super().__init__(head)
        if total_tokens < 2 or depth < 1 or top_k < 1:
            raise ValueError("need total_tokens >= 2, depth >= 1, top_k >= 1")
        if top_k + depth * top_k * top_k < total_tokens - 1:
            raise ValueError(f"the pool ({top_k} + {depth} * {top_k}^2) is smaller than total_tokens - 1")
        self.num_nodes, self.depth, self.top_k = int(total_tokens), int(depth), int(top_k)

    def head_scratch(self) -> int:
        return self.depth * self.top_k + 1

    def draft_tree(self, ctx, root_feature, q_root):
        state, timer = ctx.state, ctx.timer
        k, copies = self.top_k, ctx.cfg_copies
        batch, device = state.batch_size, state.device
        n0, active = state.n_gen, state.active
        with timer.phase("tree_masks"):
            f_score, f_tok = _top_k(torch.log(q_root), k)
            f_gen = torch.arange(k, device=device).expand(batch, k)
            f_feat = root_feature[:, None, :].expand(-1, k, -1)
            f_anc = torch.zeros(batch, k, self.head_slots, dtype=torch.bool, device=device)
            pool = {"tok": [f_tok], "score": [f_score], "parent": [torch.full_like(f_tok, -1)],
                    "depth": [torch.ones_like(f_tok)]}
            eye = torch.eye(k, dtype=torch.bool, device=device).expand(batch, k, k)
            valid = active[:, None].expand(batch, k)
            offs = torch.arange(k, device=device)[None, :]
        for r in range(self.depth):
            with timer.phase("tree_masks"):
                slots = (n0 + r * k)[:, None] + offs
                positions = (n0 + r + 1)[:, None].expand(batch, k)
                mask = attention_mask(slots, valid, n0, self.head_slots, intra=eye, extra=f_anc)
            logits, feat = self.head_forward(ctx, f_tok, f_feat, positions, slots, valid, mask)
            with timer.phase("logits"):
                q = ctx.process(logits)
            with timer.phase("tree_masks"):
                child_lq, child_tok = _top_k(torch.log(q), k)  # (batch, k parents, k children)
                c_score = (f_score[:, :, None] + child_lq).reshape(batch, k * k)
                c_tok = child_tok.reshape(batch, k * k)
                c_parent = f_gen[:, :, None].expand(batch, k, k).reshape(batch, k * k)
                pool["tok"].append(c_tok)
                pool["score"].append(c_score)
                pool["parent"].append(c_parent)
                pool["depth"].append(torch.full_like(c_tok, r + 2))
                if r == self.depth - 1:
                    break
                best = torch.sort(-c_score, dim=1, stable=True).indices[:, :k]  # next frontier, ties by generation
                par = best // k
                f_tok, f_score = c_tok.gather(1, best), c_score.gather(1, best)
                f_gen = k + r * k * k + best
                anc = f_anc | torch.zeros_like(f_anc).scatter_(2, slots[:, :, None], True)
                f_anc = anc.gather(1, par[:, :, None].expand(-1, -1, self.head_slots))
                f_feat = feat.gather(1, par.repeat(copies, 1)[:, :, None].expand(-1, -1, feat.shape[-1]))
        with timer.phase("tree_masks"):
            pooled = [torch.cat(pool[key], dim=1) for key in ("tok", "score", "parent", "depth")]
            tokens, parents, depth, selected = select_dynamic_tree(*pooled, self.num_nodes, return_selected=True)
        if self.sizer is not None:
            self._pool = (pooled[1], pooled[3], selected)
        return tokens, parents, depth, None

    # -- size="auto" (specdec.decoding.sizing): tree size and expansion rounds -------------------------------
    def size_label(self) -> str:
        return f"{self.num_nodes} nodes, depth {self.depth}" if self.num_nodes > 1 else "no drafts (AR steps)"

    def explore_size(self):
        return (self.num_nodes, self.depth)

    def new_size_stats(self, explore):
        return DynamicTreeStats(max_depth=explore[1], max_nodes=explore[0])

    def size_candidates(self, stats):
        k = self.top_k
        return [(1, 0)] + [(m, d) for d in range(1, stats.max_depth + 1) for m in range(2, stats.max_nodes + 1)
                           if m - 1 <= k + d * k * k and stats.observed(m, d)]  # (1, 0): a lone root (plain AR)

    def expected_accepted(self, stats, size) -> float:
        return 0.0 if size[0] == 1 else stats.expected_accepted(*size)

    def step_seconds(self, calibration, rows, size, stats) -> float:
        nodes, depth = size
        if nodes == 1:
            return calibration.cost("target", rows, 1)
        catch_up = 1.0 + stats.expected_accepted(nodes, depth)  # the head re-feeds the last step's tokens
        return (calibration.cost("target", rows, nodes) + calibration.cost("head", rows, catch_up)
                + depth * calibration.cost("head", rows, self.top_k))

    def apply_size(self, size) -> None:
        self.num_nodes, self.depth = int(size[0]), int(size[1])

    def observe_size(self, out, active) -> None:
        """Rank of every accepted node in the candidate pool of each smaller number of rounds (ties to the lower
        generation index, as :func:`select_dynamic_tree` breaks them)."""
        scores, depth, selected = self._pool
        length = self.depth + 1  # longest accepted path
        nodes = out.accepted_nodes[:, :length]
        if nodes.shape[1] < length:
            nodes = torch.cat([nodes, nodes.new_full((nodes.shape[0], length - nodes.shape[1]), -1)], dim=1)
        gen = selected.gather(1, (nodes - 1).clamp_min(0))
        score = scores.gather(1, gen)
        pool_gen = torch.arange(scores.shape[1], device=scores.device)
        better = (scores[:, None, :] > score[:, :, None]) | (
            (scores[:, None, :] == score[:, :, None]) & (pool_gen[None, None, :] < gen[:, :, None]))
        by_depth = torch.nn.functional.one_hot(depth - 1, self.depth + 1).to(torch.float32)  # (batch, P, D + 1)
        ranks = torch.bmm(better.to(torch.float32), by_depth).cumsum(-1)  # [b, l, d']: better with depth <= d' + 1
        level = torch.arange(length, device=scores.device)
        beyond = (nodes[:, :, None] < 0) | (level[None, :, None] > level[None, None, :])  # off path / too deep
        ranks = torch.where(beyond, float(self.sizer.stats.max_nodes), ranks)
        self.sizer.stats.observe(ranks.long(), active, self.num_nodes, self.depth)


#: From this vocabulary size on, _top_k selects before it sorts (at 16384 codes 7-11x faster than a full stable sort
#: of the row on a CPU; below, the full sort is as fast).
SELECT_FROM_VOCAB = 4096


def _top_k(scores: torch.Tensor, k: int):
    """Top-k along the last dim with ties to the lower token id (what a stable descending sort gives), independent
    of batch layout. ``k`` must not exceed the last dim."""
    vocab = scores.shape[-1]
    if vocab < SELECT_FROM_VOCAB:
        values, indices = torch.sort(scores, dim=-1, descending=True, stable=True)
        return values[..., :k], indices[..., :k]
    # torch.topk's k-th value is exact, but its order among equal values is not specified: keep every score above
    # it and the lowest-id scores equal to it, then order those k by (score desc, id asc).
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    above = scores > kth
    equal = scores == kth
    keep = above | (equal & (equal.cumsum(-1) <= k - above.sum(-1, keepdim=True)))
    ids = torch.arange(vocab, device=scores.device)
    kept = torch.topk(torch.where(keep, ids, vocab + ids), k, dim=-1, largest=False, sorted=True).indices
    values = scores.gather(-1, kept)
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices
    return values.gather(-1, order), kept.gather(-1, order)
