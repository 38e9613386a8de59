"""Method base classes: a chain step (AR, SD, SJD, GSD) and the hooks a method fills in.

Acceptance is never computed here: every verification goes through the method's
:class:`specdec.SpeculativeVerifier` (``ctx.verifier``, configured with the call's sampling settings).
"""

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

    def max_feed(self) -> int:
        return self.num_drafts + 1

    def propose(self, ctx) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Drafts ``(batch, L)`` int64 and their q ``(batch, L, V)`` (None: one-hot drafts)."""
        batch = ctx.state.batch_size
        return torch.zeros(batch, 0, dtype=torch.int64, device=ctx.state.device), None

    def after_verify(self, ctx, p, accept_len, next_token, num_drafts, ran) -> None:
        """Hook after the commit (``ctx.state`` is already updated). ``p``: ``(batch, L+1, V)`` processed target
        rows of this step; ``ran``: ``(batch,)`` rows that took part in it."""

    def step(self, ctx) -> torch.Tensor:
        state = ctx.state
        active = state.active
        drafts, q = self.propose(ctx)
        width = drafts.shape[1]
        n = torch.minimum(state.remaining - 1, torch.full_like(state.remaining, width)).clamp_min(0)
        n = torch.where(active, n, 0)
        offs = torch.arange(width + 1, device=state.device)
        tokens = torch.cat([state.last[:, None], drafts], dim=1)
        positions = state.n_gen[:, None] + offs[None, :]
        valid = (offs[None, :] <= n[:, None]) & active[:, None]
        mask = attention_mask(positions, valid, state.n_gen, ctx.num_slots)
        logits, _ = run_model(ctx.model, ctx.cache, tokens, positions, positions, valid, mask,
                              cfg_copies=ctx.cfg_copies)
        ctx.recorder.metrics.target_forwards += 1
        # Idle rows verify zero drafts on their (ignored) padding logits; their outcome is not committed.
        out = ctx.verifier.step(logits, drafts, num_drafts=n, draft_probs=q, u_accept=ctx.uniform(LANE_ACCEPT, width),
                                u_sample=ctx.uniform(LANE_SAMPLE, 1)[:, 0])
        accept_len, next_token = out.accept_len, out.next_token
        state.commit(out.tokens, torch.where(active, out.num_kept, 0))
        self.after_verify(ctx, out.probs, accept_len, next_token, n, active)
        return torch.where(active, accept_len, 0)
