"""Speculative Jacobi Decoding (arXiv 2410.01699; docs/ALGORITHMS.md §2.2, 3.2): no draft model, a window of
``window - 1`` drafts refined by the target's own samples, verified exactly with ``verify_chain``."""

import math

import torch

from specdec_kernels.reference import inverse_cdf

from ..rng import LANE_ACCEPT, LANE_DRAFT, LANE_INIT, LANE_KEEP, LANE_SAMPLE
from ..sampling import sample
from ..sizing import ChainStats
from .base import ChainMethod

INITS = ("random", "repeat_left")
MAX_AUTO_WINDOW = 32  # the longest window size="auto" considers


class SJD(ChainMethod):
    """Jacobi drafts with the standard (exact) test.

    After a step that accepted ``a`` of ``n`` drafts, the new window is: tokens sampled from this step's p rows
    ``a+1 .. n`` (each with its source row as q; the Jacobi fixed-point update), then fresh init tokens with
    one-hot q. Inits: ``"random"`` (uniform over the vocabulary, the Lumina-mGPT / Emu3 default) or
    ``"repeat_left"`` (copy the left neighbour in the image row, the token above at a row start; LlamaGen's
    ``repeat_horizon``). One-hot rows are materialised in q, which the op treats exactly like ``q=None``.

    ``coupled=True`` is MC-SJD (arXiv 2510.24211): each refreshed draft keeps the previous iteration's token at its
    position with probability ``min(1, q_new(x) / q_old(x))``, else draws from ``max(0, q_new - q_old)``; the draft's
    marginal stays ``q_new`` (verification stays exact) while drafts that stop changing keep being accepted.

    ``fused=True`` (default) runs verification and the refresh as one kernel call from the raw logits
    (:func:`specdec_kernels.jacobi_step`); ``fused=False`` processes every row, verifies, then refreshes in eager torch
    ops (the composition the kernel is tested against; also used under ``truncate_to_worst``, whose refresh depends
    on the truncated accept lengths). Both give the same tokens.
    """

    name = "sjd"

    def __init__(self, window: int = 16, init: str = "random", grid_width: int | None = None,
                 coupled: bool = False, fused: bool = True):
        if window < 2:
            raise ValueError(f"window must be >= 2 (last token + drafts), got {window}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.num_drafts = int(window) - 1
        self.init = init
        self.grid_width = grid_width
        self.coupled = bool(coupled)
        self.fused = bool(fused)
        self._next = None  # the fused step's next window, adopted in after_verify
        self._per_row = False  # this call's sampling has per-row settings, which the fused op does not take

    @property
    def needs_probs(self) -> bool:
        """The eager refresh samples the next window from this step's processed rows; the fused one needs none."""
        return not self._runs_fused()

    def _runs_fused(self) -> bool:
        return self.fused and not self.truncate_to_worst and self.num_drafts > 0 and not self._per_row

    # -- size="auto" (specdec.decoding.sizing): the window length ------------------------------------------
    def size_label(self) -> str:
        return f"window {self.num_drafts + 1}" if self.num_drafts else "no drafts (AR steps)"

    def cost_roles(self, model):
        return {"target": model}

    def explore_size(self):
        return self.num_drafts + 1

    def new_size_stats(self, explore):
        return ChainStats(per_width=True)  # Jacobi windows: each window length's own statistics

    def size_candidates(self, stats):
        return list(range(1, MAX_AUTO_WINDOW + 1))  # window 1: no drafts (plain AR) where speculation cannot pay

    def expected_accepted(self, stats, window) -> float:
        return stats.expected_accepted(window - 1)

    def step_seconds(self, calibration, rows, window, stats) -> float:
        return calibration.cost("target", rows, window)

    def apply_size(self, window) -> None:
        self.num_drafts = int(window) - 1

    def start(self, ctx, prefill_hidden):
        state = ctx.state
        vocab = int(ctx.model.vocab_size)
        self.vocab = vocab
        if self.grid_width is None:
            side = math.isqrt(state.num_tokens)
            self.grid_width = side if side * side == state.num_tokens else state.num_tokens
        width = self.num_drafts
        self.window = torch.zeros(state.batch_size, width, dtype=torch.int64, device=state.device)
        self.q = torch.zeros(state.batch_size, width, vocab, device=state.device)
        self._refill(ctx, torch.zeros_like(state.n_gen), self.window, self.q)

    def propose(self, ctx):
        return self.window, self.q

    def verify(self, ctx, logits, q, drafts, n):
        """Fused: verification and the Jacobi refresh in one kernel call (the refresh's draws are part of it)."""
        self._per_row = ctx.verifier.sampling.per_row
        if not self._runs_fused():
            return super().verify(ctx, logits, q, drafts, n)
        width = drafts.shape[1]
        with ctx.timer.phase("verify"):
            out, self._next = ctx.verifier.jacobi_step(
                logits, drafts, q, num_drafts=n, u_accept=ctx.uniform(LANE_ACCEPT, width),
                u_sample=ctx.uniform(LANE_SAMPLE, 1)[:, 0], u_draft=ctx.uniform(LANE_DRAFT, width),
                u_keep=ctx.uniform(LANE_KEEP, width) if self.coupled else None,
                u_init=ctx.uniform(LANE_INIT, width) if self.init == "random" else None, update=ctx.state.active)
        return out

    def after_verify(self, ctx, p, accept_len, next_token, num_drafts, ran):
        if self.num_drafts == 0:  # window 1 (size="auto" where drafting cannot pay): nothing to refresh
            return
        with ctx.timer.phase("draft"):  # the Jacobi update is this method's drafting
            if self._next is not None:  # the fused step drew it already; a spatial init fills the fresh entries
                step, self._next = self._next, None
                if self.init != "random":
                    self._refill(ctx, step.first_init, step.window, step.q)
                self.window, self.q = step.window, step.q
                return
            self._jacobi_update(ctx, p, accept_len, num_drafts, ran)

    def _jacobi_update(self, ctx, p, accept_len, num_drafts, ran):
        state = ctx.state
        width = self.num_drafts
        j = torch.arange(width, device=state.device)
        src = (accept_len[:, None] + 1 + j[None, :]).clamp_max(width)  # p rows a+1 .. L
        refreshed = j[None, :] < (num_drafts - accept_len)[:, None]  # rows a+1 .. n only
        rows = p.gather(1, src[:, :, None].expand(-1, -1, p.shape[-1]))
        u = ctx.uniform(LANE_DRAFT, width)
        drawn = sample(rows.reshape(-1, p.shape[-1]), u.reshape(-1), validate=ctx.validate).view_as(src)
        if self.coupled:
            drawn = self._couple(ctx, rows, drawn, src, refreshed & (src < num_drafts[:, None]), u)
        window = torch.where(refreshed, drawn, 0)
        q = rows.mul_(refreshed[:, :, None])  # in place on the gathered copy: rows a+1 .. n, zeros after
        keep = state.active & ran
        n_refreshed = torch.where(keep, (num_drafts - accept_len).clamp_min(0), width)
        self._refill(ctx, n_refreshed, window, q)
        self.window = torch.where(keep[:, None], window, self.window)
        self.q = torch.where(keep[:, None, None], q, self.q)

    def _couple(self, ctx, rows, drawn, src, has_old, u_draft):
        """MC-SJD's maximal coupling, eagerly (the fused kernel does it in its refresh): keep the old draft x at
        position ``src`` when ``u_keep * q_old(x) < q_new(x)``, else draw from ``max(0, q_new - q_old)``."""
        width = self.num_drafts
        old_pos = src.clamp_max(width - 1)
        x_old = self.window.gather(1, old_pos)
        q_old = self.q.gather(1, old_pos[:, :, None].expand(-1, -1, rows.shape[-1])).double()
        q_new = rows.double()
        keep = ctx.uniform(LANE_KEEP, width).double() * q_old.gather(2, x_old[:, :, None])[..., 0] < \
            q_new.gather(2, x_old[:, :, None])[..., 0]
        residual = (q_new - q_old).clamp_min(0.0)
        has_mass = residual.sum(-1) > 0
        redrawn = inverse_cdf(torch.where(has_mass[..., None], residual, q_new).reshape(-1, rows.shape[-1]),
                              u_draft.reshape(-1)).view_as(src)  # float64 weights, as the kernels draw them
        coupled = torch.where(keep, x_old, torch.where(has_mass, redrawn, drawn))
        return torch.where(has_old, coupled, drawn)

    def _refill(self, ctx, first_init: torch.Tensor, window: torch.Tensor, q: torch.Tensor) -> None:
        """Fill window entries ``j >= first_init[b]`` with fresh inits (one-hot q), in place."""
        state = ctx.state
        width = self.num_drafts
        j = torch.arange(width, device=state.device)
        fresh = j[None, :] >= first_init[:, None]
        if self.init == "random":
            u = ctx.uniform(LANE_INIT, width)
            init = (u * self.vocab).long().clamp_max(self.vocab - 1)
            window.copy_(torch.where(fresh, init, window))
        else:
            window.copy_(torch.where(fresh, self._repeat_left(state, window, fresh), window))
        # one-hot rows for the fresh entries, in place (adding 0 to the others leaves them bit for bit)
        q.masked_fill_(fresh[:, :, None], 0.0).scatter_add_(2, window[:, :, None], fresh[:, :, None].to(q.dtype))

    def _repeat_left(self, state, window: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """Each fresh entry copies its left neighbour in the image row (the token above at a row start), which may
        itself be fresh: follow the chain to the first committed or refreshed token by pointer doubling."""
        batch, width = window.shape
        length = state.tokens.shape[1] + width
        j = torch.arange(width, device=window.device)
        pos = state.n_gen[:, None] + j[None, :]  # raster index of window entry j (< length)
        buf = torch.cat([state.tokens, state.tokens.new_zeros(batch, width)], dim=1).scatter_(1, pos, window)
        left = torch.where(pos % self.grid_width > 0, pos - 1, pos - self.grid_width)
        left = torch.where(left >= 0, left, pos - 1).clamp(0, length - 1)
        ptr = torch.arange(length, device=window.device).expand(batch, length).clone()
        ptr.scatter_(1, pos, torch.where(fresh, left, pos))
        for _ in range(max(1, width).bit_length() + 1):  # chains are at most `width` long and only point left
            ptr = ptr.gather(1, ptr)
        return buf.gather(1, ptr.gather(1, pos))


class MCSJD(SJD):
    """MC-SJD (arXiv 2510.24211): SJD whose Jacobi refresh couples each new draft with the previous iteration's token
    at its position (maximal coupling, ``coupled=True``). Exact, like SJD; drafts that have converged stay put, so
    more of them are accepted per step."""

    name = "mc-sjd"

    def __init__(self, window: int = 16, init: str = "random", grid_width: int | None = None, fused: bool = True):
        super().__init__(window=window, init=init, grid_width=grid_width, coupled=True, fused=fused)
