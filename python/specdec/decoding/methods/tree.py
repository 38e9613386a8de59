"""Tree methods' shared step: draft head catch-up, tree drafting (subclass), target tree forward,
``verify_tree``, KV compaction (docs/ALGORITHMS.md §2.5, 3.5; docs/TESTBED.md §1.7)."""

from typing import NamedTuple, Optional, Tuple

import torch

import specdec_kernels as sk

from ..feed import attention_mask, run_model
from ..rng import LANE_ACCEPT, LANE_SAMPLE
from .base import ChainMethod, Method, truncate_to_worst

#: The step of a lone-root tree: no drafts, one target forward over the last committed token, the exact sample.
#: The slot of the root is the cache slot a chain step writes, so nothing is compacted and the head is not fed.
_PLAIN_STEP = ChainMethod()


def tree_forward(ctx, tree_tokens, parents, num_nodes, n0, active):
    """One target forward over a batch of trees rooted at positions ``n0`` (root = last committed token, slot
    ``n0``): node n gets slot ``n0 + n`` and position ``n0 + depth(n)``; it sees the committed prefix
    (slots < n0), its ancestors and itself (:func:`specdec_kernels.build_tree`'s mask widened over the prefix)."""
    m = tree_tokens.shape[1]
    with ctx.timer.phase("tree_masks"):
        tree_mask, tree_pos, _ = sk.build_tree(parents, num_nodes, validate=ctx.validate)
        offs = torch.arange(m, device=tree_tokens.device)
        slots = n0[:, None] + offs[None, :]
        valid = (offs[None, :] < num_nodes[:, None]) & active[:, None]
        mask = attention_mask(slots, valid, n0, ctx.num_slots, intra=tree_mask)
    ctx.recorder.metrics.target_forwards += 1
    with ctx.timer.phase("target_forward"):
        return run_model(ctx.model, ctx.cache, tree_tokens, n0[:, None] + tree_pos, slots, valid, mask,
                         cfg_copies=ctx.cfg_copies)


class DraftTree(NamedTuple):
    """One step's draft trees, root included: ``tokens``, ``parents`` ``(batch, M)`` int64 (-1 at the root),
    ``num_nodes`` ``(batch,)`` and the draft distributions ``q`` ``(batch, M, V)`` or None (deterministic
    candidates)."""

    tokens: torch.Tensor
    parents: torch.Tensor
    num_nodes: torch.Tensor
    q: Optional[torch.Tensor]


class TreeMethod(Method):
    """Base of EAGLE-2 / LANTERN / static-tree methods with an EAGLE-1-style draft head.

    Head protocol: ``head.new_cache(rows, slots)`` and ``head.forward_tokens(tokens, hidden, positions, slots,
    attn_mask, cache) -> (logits, feature)``, where entry (token at position j, target feature at position j-1)
    yields the predicted feature at j and logits drafting the token at j+1. Head K/V of the token at position j
    lives in head slot j - 1; tree node n of a step rooted at position r uses scratch slots after r - 1.

    Slots in the target cache: node n of a tree rooted at position r sits at slot r + n with RoPE position
    r + depth(n); after verification the accepted path is compacted to slots r, r + 1, ... (3.5).
    """

    num_nodes = 1  # M, root included

    def __init__(self, head):
        self.head = head

    # -- subclass hooks ------------------------------------------------------------------------------------
    def head_scratch(self) -> int:
        """Head slots a tree draft needs past the root's slot."""
        raise NotImplementedError

    def draft_tree(self, ctx, root_feature, q_root) -> Tuple[torch.Tensor, ...]:
        """Return node tokens, parents, depths for nodes 1..M-1 (each ``(batch, M-1)``) and q ``(batch, M, V)``
        or None (deterministic candidates): ``(tokens, parents, depth, q)``."""
        raise NotImplementedError

    def observe_size(self, out, active) -> None:
        """size="auto": record what smaller trees would have accepted on this step (subclass)."""

    def cost_roles(self, model):
        return {"target": model, "head": self.head}

    # -- shared machinery ----------------------------------------------------------------------------------
    def max_feed(self) -> int:
        return self.num_nodes

    def start(self, ctx, prefill_hidden):
        state = ctx.state
        self.head_slots = state.num_tokens + self.head_scratch() + 1
        self.head_cache = self.head.new_cache(ctx.cfg_copies * state.batch_size, self.head_slots)
        # Pending head entries: committed tokens whose head K/V is missing, with the target features before them.
        self.pend_tokens = state.tokens[:, :1].clone()
        self.pend_hidden = prefill_hidden[:, None, :]
        self.pend_count = torch.ones_like(state.n_gen)
        self.pend_start = torch.ones_like(state.n_gen)  # position of the first pending token

    def head_forward(self, ctx, tokens, hidden, positions, slots, valid, mask):
        ctx.recorder.metrics.draft_forwards += 1
        positions = positions.clamp_max(ctx.state.num_tokens)
        with ctx.timer.phase("draft"):
            return run_model(self.head, self.head_cache, tokens, positions, slots, valid, mask,
                             cfg_copies=ctx.cfg_copies, hidden=hidden)

    def _catch_up(self, ctx):
        state = ctx.state
        width = self.pend_tokens.shape[1]
        offs = torch.arange(width, device=state.device)
        positions = self.pend_start[:, None] + offs[None, :]
        valid = (offs[None, :] < self.pend_count[:, None]) & state.active[:, None]
        slots = positions - 1
        with ctx.timer.phase("tree_masks"):
            mask = attention_mask(slots, valid, self.pend_start - 1, self.head_slots)
        logits, feature = self.head_forward(ctx, self.pend_tokens, self.pend_hidden, positions, slots, valid, mask)
        last = (self.pend_count - 1).clamp_min(0)
        last_rows = last.repeat(ctx.cfg_copies)
        root_feature = feature[torch.arange(feature.shape[0]), last_rows]
        with ctx.timer.phase("logits"):
            q_root = ctx.process(logits[torch.arange(logits.shape[0]), last_rows])
        return root_feature, q_root

    def step(self, ctx) -> torch.Tensor:
        """One verify step in four phases: propose (head catch-up, draft tree), one target forward over the
        tree, verify, commit (tokens, KV compaction, the head's pending entries)."""
        if self.num_nodes == 1:  # size="auto" chose a lone root: a plain AR step, at AR's cost (the head idles)
            return _PLAIN_STEP.step(ctx)
        active = ctx.state.active
        n0 = ctx.state.n_gen.clone()  # the root's position: the last committed token
        tree = self.propose(ctx)  # 1. propose
        logits, hidden = self.target_forward(ctx, tree, n0, active)  # 2. one target forward
        out = self.verify(ctx, logits, tree)  # 3. verify
        if self.truncate_to_worst:
            out = truncate_to_worst(out, active)
        accept_len = torch.where(active, out.accept_len, 0)
        with ctx.timer.phase("bookkeeping"):
            self.commit(ctx, n0, active, hidden, out, accept_len)  # 4. commit
            if self.sizer is not None and self.num_nodes > 1:
                self.observe_size(out, active)
        return accept_len

    def propose(self, ctx) -> DraftTree:
        """Catch the head up on the committed tokens, draft this step's tree and prepend the root (the last
        committed token) as node 0; nodes past the image end are dropped."""
        state = ctx.state
        root_feature, q_root = self._catch_up(ctx)
        node_tokens, parents, depth, q = self.draft_tree(ctx, root_feature, q_root)
        zero = torch.zeros(state.batch_size, 1, dtype=torch.int64, device=state.device)
        tree_tokens = torch.cat([state.last[:, None], node_tokens], dim=1)
        parents = torch.cat([zero - 1, parents], dim=1)
        depth = torch.cat([zero, depth], dim=1)
        # Nodes are depth-ordered, so dropping those past the image end keeps a prefix of node ids.
        fits = (depth[:, 1:] <= (state.remaining - 1)[:, None]).sum(1)
        num_nodes = torch.where(state.active, 1 + fits, 1)
        return DraftTree(tree_tokens, parents, num_nodes, q)

    def target_forward(self, ctx, tree: DraftTree, n0, active) -> Tuple[torch.Tensor, torch.Tensor]:
        """One target forward over the trees: raw logits ``(copies * batch, M, V)`` and the target's hidden
        states."""
        return tree_forward(ctx, tree.tokens, tree.parents, tree.num_nodes, n0, active)

    def verify(self, ctx, logits, tree: DraftTree):
        """Process the logits and verify the trees (``ctx.verifier``): accepted path, accept length, next token
        and emitted tokens per row. Idle rows verify a lone root on their (ignored) padding logits; their outcome
        is not committed."""
        m = tree.tokens.shape[1]
        with ctx.timer.phase("verify"):  # logits processing included (fused into the op when the library has it)
            return ctx.verifier.step_tree(logits, tree.tokens, tree.parents, num_nodes=tree.num_nodes,
                                          draft_probs=tree.q, u_accept=ctx.uniform(LANE_ACCEPT, m),
                                          u_sample=ctx.uniform(LANE_SAMPLE, 1)[:, 0], return_probs=False)

    def commit(self, ctx, n0, active, hidden, out, accept_len) -> None:
        """Append the accepted path's tokens and the next token, compact the path's KV to consecutive slots, and
        queue the emitted tokens for the head's next catch-up."""
        state = ctx.state
        width = int(accept_len.max()) + 1
        path = out.path[:, :width]  # root, accepted nodes
        on_path = torch.arange(width, device=state.device)[None, :] <= accept_len[:, None]
        emitted = out.tokens[:, :width]
        state.commit(emitted, torch.where(active, accept_len + 1, 0))
        self._compact(ctx, n0, path, on_path)
        self._set_pending(ctx, active, n0, emitted, hidden, path, accept_len)

    def _compact(self, ctx, n0, path, on_path):
        src = torch.where(on_path, n0[:, None] + path, n0[:, None])  # padding copies the root onto itself
        dst = torch.where(on_path, n0[:, None] + torch.arange(path.shape[1], device=path.device)[None, :], n0[:, None])
        ctx.model.compact_cache(ctx.cache, src.repeat(ctx.cfg_copies, 1), dst.repeat(ctx.cfg_copies, 1))

    def _set_pending(self, ctx, active, n0, emitted, hidden, path, accept_len):
        # Tokens at positions n0+1 .. n0+a+1 pair with the target features of the path nodes (positions n0..n0+a).
        rows = path.repeat(ctx.cfg_copies, 1)
        feats = hidden.gather(1, rows[:, :, None].expand(-1, -1, hidden.shape[-1]))
        keep = active
        width = max(path.shape[1], self.pend_tokens.shape[1])
        self.pend_tokens = torch.where(keep[:, None], _pad(emitted, width), _pad(self.pend_tokens, width))
        keep2 = keep.repeat(ctx.cfg_copies)
        self.pend_hidden = torch.where(keep2[:, None, None], _pad(feats, width), _pad(self.pend_hidden, width))
        self.pend_count = torch.where(keep, accept_len + 1, self.pend_count)
        self.pend_start = torch.where(keep, n0 + 1, self.pend_start)


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[1] >= width:
        return t[:, :width]
    pad = t.new_zeros((t.shape[0], width - t.shape[1]) + tuple(t.shape[2:]))
    return torch.cat([t, pad], dim=1)
