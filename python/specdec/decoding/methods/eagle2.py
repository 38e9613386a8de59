"""EAGLE-2 dynamic draft trees (arXiv 2406.16858; docs/ALGORITHMS.md §2.5) verified exactly by recursive rejection
(``verify_tree``, q = None: deterministic top-K candidates)."""

import torch

from ..defaults import EAGLE_DEPTH, EAGLE_TOP_K, EAGLE_TOTAL_TOKENS
from ..feed import attention_mask
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
        state = ctx.state
        k, copies = self.top_k, ctx.cfg_copies
        batch, device = state.batch_size, state.device
        n0, active = state.n_gen, state.active
        f_score, f_tok = _top_k(torch.log(q_root), k)
        f_gen = torch.arange(k, device=device).expand(batch, k)
        f_feat = root_feature[:, None, :].expand(-1, k, -1)
        f_anc = torch.zeros(batch, k, self.head_slots, dtype=torch.bool, device=device)
        pool = {"tok": [f_tok], "score": [f_score], "parent": [torch.full_like(f_tok, -1)],
                "depth": [torch.ones_like(f_tok)]}
        eye = torch.eye(k, dtype=torch.bool, device=device).expand(batch, k, k)
        valid = active[:, None].expand(batch, k)
        for r in range(self.depth):
            slots = (n0 + r * k)[:, None] + torch.arange(k, device=device)[None, :]
            positions = (n0 + r + 1)[:, None].expand(batch, k)
            mask = attention_mask(slots, valid, n0, self.head_slots, intra=eye, extra=f_anc)
            logits, feat = self.head_forward(ctx, f_tok, f_feat, positions, slots, valid, mask)
            child_lq, child_tok = _top_k(torch.log(ctx.process(logits)), k)  # (batch, k parents, k children)
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
        tokens, parents, depth = select_dynamic_tree(
            *(torch.cat(pool[key], dim=1) for key in ("tok", "score", "parent", "depth")), self.num_nodes
        )
        return tokens, parents, depth, None


def _top_k(scores: torch.Tensor, k: int):
    """Top-k along the last dim with ties to the lower token id (a stable sort), independent of batch layout."""
    values, indices = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[..., :k], indices[..., :k]
