"""Standard speculative decoding with a small AR draft model of the same protocol (arXiv 2211.17192,
2302.01318): gamma drafts sampled from the processed draft distribution q, verified exactly."""

import torch

from ..feed import attention_mask, run_model
from ..rng import LANE_DRAFT
from ..sampling import sample
from ..sizing import ChainStats
from .base import ChainMethod

MAX_AUTO_GAMMA = 8  # the longest draft size="auto" considers


class SD(ChainMethod):
    """Draft ``gamma`` tokens with ``draft_model`` (processed with the same CFG / temperature / top-k), verify
    them with ``verify_chain(method="exact")``.

    The draft cache lags behind the target: after a step it holds K/V up to the last draft it fed that was
    committed; the next step first re-feeds the (at most two) committed tokens it is missing.
    """

    name = "sd"

    def __init__(self, draft_model, gamma: int = 4):
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        self.draft_model = draft_model
        self.num_drafts = int(gamma)

    # -- size="auto" (specdec.decoding.sizing): the draft length gamma -------------------------------------
    def size_label(self) -> str:
        return f"gamma {self.num_drafts}" if self.num_drafts else "no drafts (AR steps)"

    def cost_roles(self, model):
        return {"target": model, "draft": self.draft_model}

    def explore_size(self):
        return self.num_drafts

    def new_size_stats(self, explore):
        return ChainStats()

    def size_candidates(self, stats):
        return list(range(0, MAX_AUTO_GAMMA + 1))  # gamma 0: no drafts (plain AR) where drafting cannot pay

    def expected_accepted(self, stats, gamma) -> float:
        return stats.expected_accepted(gamma)

    def step_seconds(self, calibration, rows, gamma, stats) -> float:
        if gamma == 0:
            return calibration.cost("target", rows, 1)
        # the draft first re-feeds (at most two) committed tokens, then one token per further draft
        return (calibration.cost("target", rows, gamma + 1) + calibration.cost("draft", rows, 2)
                + (gamma - 1) * calibration.cost("draft", rows, 1))

    def apply_size(self, gamma) -> None:
        self.num_drafts = int(gamma)

    def start(self, ctx, prefill_hidden):
        state = ctx.state
        self.cache = self.draft_model.new_cache(ctx.cfg_copies * state.batch_size, ctx.num_slots)
        self.draft_model.prefill(ctx.class_rows(self.draft_model.num_classes), self.cache)
        ctx.recorder.metrics.draft_forwards += 1
        self.draft_len = torch.ones_like(state.n_gen)  # draft K/V valid at slots < draft_len (class token)

    def propose(self, ctx):
        state = ctx.state
        active = state.active
        gamma = self.num_drafts
        if gamma == 0:  # size="auto" chose no drafts: plain AR steps, the draft model idles
            self._fed_end = self.draft_len
            return torch.zeros(state.batch_size, 0, dtype=torch.int64, device=state.device), None
        n = torch.where(active, (state.remaining - 1).clamp(0, gamma), 0)
        # Catch-up: committed tokens at positions draft_len .. n_gen (the last one is `last`), right-aligned.
        lag = (state.n_gen - self.draft_len + 1).clamp_min(1)
        width = int(lag.max())
        offs = torch.arange(width, device=state.device) - width + 1  # ..., -1, 0
        positions = state.n_gen[:, None] + offs[None, :]
        valid = (offs[None, :] > -lag[:, None]) & active[:, None]
        tokens = state.tokens.gather(1, (positions - 1).clamp(0, state.num_tokens - 1))
        uniforms = ctx.uniform(LANE_DRAFT, gamma)
        drafts, qs = [], []
        prefix = self.draft_len
        timer = ctx.timer
        for i in range(gamma):
            with timer.phase("tree_masks"):
                mask = attention_mask(positions, valid, prefix, ctx.num_slots)
            with timer.phase("draft"):
                logits, _ = run_model(self.draft_model, self.cache, tokens, positions, positions, valid, mask,
                                      cfg_copies=ctx.cfg_copies)
            ctx.recorder.metrics.draft_forwards += 1
            with timer.phase("logits"):
                q = ctx.process(logits[:, -1])
            qs.append(q)
            with timer.phase("draft"):
                drafts.append(sample(q, uniforms[:, i], validate=ctx.validate))
            if i == gamma - 1:
                break
            prefix = torch.where(valid[:, -1], positions[:, -1] + 1, prefix)
            tokens, positions = drafts[-1][:, None], positions[:, -1:] + 1
            valid = (i + 1 < n)[:, None]
        # Draft K/V now covers positions < fed_end (the catch-up and drafts 0 .. n-2).
        self._fed_end = torch.where(active, state.n_gen + n.clamp_min(1), self.draft_len)
        return torch.stack(drafts, dim=1), torch.stack(qs, dim=1)

    def after_verify(self, ctx, p, accept_len, next_token, num_drafts, ran):
        # Fed drafts agree with the commit up to the first rejection: keep K/V below min(fed_end, new n_gen).
        self.draft_len = torch.minimum(self._fed_end, ctx.state.n_gen)
