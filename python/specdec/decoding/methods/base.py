"""Method base classes: a chain step (AR, SD, SJD, GSD) and the hooks a method fills in.

Acceptance is never computed here: every verification goes through the method's
:class:`specdec.SpeculativeVerifier` (``ctx.verifier``, configured with the call's sampling settings).
"""

from dataclasses import replace
from typing import Optional, Tuple

import torch

from ...verifier import SpeculativeVerifier
from ..feed import attention_mask, run_model
from ..rng import LANE_ACCEPT, LANE_SAMPLE


class Method:
    """One decoding method. ``start`` runs once after the prefill, ``step`` once per loop iteration.

    ``verifier``: the method's acceptance rule and its tables (exact unless a subclass builds another one
    in its constructor); :func:`~specdec.decoding.generate` gives it the call's logits processing.
    """

    name = "method"
    verifier = SpeculativeVerifier("exact")
    sizer = None  # a specdec.decoding.sizing.AutoSizer when the method runs with size="auto"
    #: Commit only as many drafts per row as the batch's worst active row accepted (what batch > 1 speculative
    #: decoders without ragged rows do); still exact, since a prefix of accepted drafts is committed.
    truncate_to_worst = False

    def begin(self, model, batch_size: int, sampling, device) -> None:
        """Called first by :func:`~specdec.decoding.generate`, before caches are sized: an auto-sized method
        picks this call's size here (held for the whole call)."""
        if self.sizer is not None:
            self.apply_size(self.sizer.choose(self, model, batch_size, sampling, device))

    def end(self, metrics) -> None:
        """Called by :func:`~specdec.decoding.generate` after the call with its metrics: an auto-sized method's
        sizer records the call's measured speed (and puts the size's report into ``metrics.sizing``)."""
        if self.sizer is not None:
            self.sizer.end(self, metrics)

    def size_label(self) -> str:
        """The size this method runs at, in words (``"window 16"``); empty for methods without one."""
        return ""

    def max_feed(self) -> int:
        """Most target entries one step feeds (sizes the cache: num_tokens + this + a trash slot)."""
        raise NotImplementedError

    def start(self, ctx, prefill_hidden: torch.Tensor) -> None:
        """Called after the prefill committed token 0 (``prefill_hidden``: ``(copies * batch, d)``)."""

    def step(self, ctx) -> torch.Tensor:
        """Advance every active row by one verify step; return accept_len ``(batch,)``."""
        raise NotImplementedError


class ChainMethod(Method):
    """Feed ``[last, d_0 .. d_{n-1}]`` per row, verify with :func:`specdec_kernels.verify_chain`, commit.

    Subclasses provide drafts through :meth:`propose` and may react to the outcome in :meth:`after_verify`.
    """

    num_drafts = 0  # L, the chain width
    needs_probs = False  # whether after_verify reads the processed target rows (else the fused op may run)

    def max_feed(self) -> int:
        return self.num_drafts + 1

    def propose(self, ctx) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Drafts ``(batch, L)`` int64 and their q ``(batch, L, V)`` (None: one-hot drafts)."""
        batch = ctx.state.batch_size
        return torch.zeros(batch, 0, dtype=torch.int64, device=ctx.state.device), None

    def after_verify(self, ctx, p, accept_len, next_token, num_drafts, ran) -> None:
        """Hook after the commit (``ctx.state`` is already updated). ``p``: ``(batch, L+1, V)`` processed target
        rows of this step (None unless the class sets ``needs_probs``); ``ran``: ``(batch,)`` rows that took part
        in it."""

    def step(self, ctx) -> torch.Tensor:
        """One verify step in four phases: propose, one target forward, verify, commit."""
        active = ctx.state.active
        drafts, q = self.propose(ctx)  # 1. propose
        n = self.draft_counts(ctx, drafts.shape[1])
        logits = self.target_forward(ctx, drafts, n)  # 2. one target forward
        out = self.verify(ctx, logits, q, drafts, n)  # 3. verify
        with ctx.timer.phase("bookkeeping"):
            if self.truncate_to_worst:
                out = truncate_to_worst(out, active)
            self.commit(ctx, out)  # 4. commit
            if self.sizer is not None and drafts.shape[1]:  # (AR steps teach the sizer nothing)
                self.sizer.stats.observe(n, out.accept_len, active, drafts.shape[1])
        self.after_verify(ctx, out.probs, out.accept_len, out.next_token, n, active)
        return torch.where(active, out.accept_len, 0)

    def draft_counts(self, ctx, width: int) -> torch.Tensor:
        """Drafts per row ``(batch,)``: ``width``, fewer near the image end, 0 for finished rows."""
        state = ctx.state
        n = torch.minimum(state.remaining - 1, torch.full_like(state.remaining, width)).clamp_min(0)
        return torch.where(state.active, n, 0)

    def target_forward(self, ctx, drafts: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Feed ``[last, d_0 .. d_{n-1}]`` per row in one target forward; return its raw logits
        ``(copies * batch, L+1, V)`` (CFG-doubled when the sampling uses CFG)."""
        state = ctx.state
        active = state.active
        width = drafts.shape[1]
        offs = torch.arange(width + 1, device=state.device)
        tokens = torch.cat([state.last[:, None], drafts], dim=1)
        positions = state.n_gen[:, None] + offs[None, :]
        valid = (offs[None, :] <= n[:, None]) & active[:, None]
        with ctx.timer.phase("tree_masks"):
            mask = attention_mask(positions, valid, state.n_gen, ctx.num_slots)
        with ctx.timer.phase("target_forward"):
            logits, _ = run_model(ctx.model, ctx.cache, tokens, positions, positions, valid, mask,
                                  cfg_copies=ctx.cfg_copies)
        ctx.recorder.metrics.target_forwards += 1
        return logits

    def verify(self, ctx, logits, q, drafts, n):
        """Process the target logits and verify the drafts (``ctx.verifier``); returns its outcome (accept length,
        next token, emitted tokens and processed target rows per row). Idle rows verify zero drafts on their
        (ignored) padding logits; their outcome is not committed."""
        width = drafts.shape[1]
        with ctx.timer.phase("verify"):  # logits processing included (fused into the op when the library has it)
            return ctx.verifier.step(logits, drafts, num_drafts=n, draft_probs=q,
                                     u_accept=ctx.uniform(LANE_ACCEPT, width), u_sample=ctx.uniform(LANE_SAMPLE, 1)[:, 0],
                                     return_probs=self.needs_probs)

    def commit(self, ctx, out) -> None:
        """Append ``drafts[b, :accept_len[b]]`` and ``next_token[b]`` to every active row."""
        state = ctx.state
        state.commit(out.tokens, torch.where(state.active, out.num_kept, 0))


def truncate_to_worst(out, active: torch.Tensor):
    """A chain or tree outcome cut to the worst active row's accept length ``w``: every row keeps its first ``w``
    accepted drafts and, as its next token, its accepted draft ``w`` (or its own next token where it accepted
    exactly ``w``). Tokens stay exact: only accepted tokens are committed."""
    worst = torch.where(active, out.accept_len, out.accept_len.max()).min()
    accept_len = torch.minimum(out.accept_len, worst)
    offs = torch.arange(out.tokens.shape[1], device=out.tokens.device)
    keep = offs[None, :] <= accept_len[:, None]
    tokens = torch.where(keep, out.tokens, -1)
    changes = {"accept_len": accept_len, "tokens": tokens, "num_kept": accept_len + 1,
               "next_token": tokens.gather(1, accept_len[:, None])[:, 0]}
    if out.new_length is not None:
        changes["new_length"] = out.new_length - out.accept_len + accept_len
    if hasattr(out, "path"):
        changes["path"] = torch.where(keep, out.path, 0)
        nodes = out.accepted_nodes
        changes["accepted_nodes"] = torch.where(offs[None, : nodes.shape[1]] < accept_len[:, None], nodes, -1)
    return replace(out, **changes)
