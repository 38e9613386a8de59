"""AR sampling and the CSpD loop for the continuous testbed (docs/ALGORITHMS.md §2.6, §3.6; docs/CSPD.md).

**Randomness.** Every random number is a pure function of (row key, token position, lane), drawn from
:class:`specdec.decoding.rng.RowStreams` with the position as the counter: a position's diffusion noise
(x_T and the T per-step noises, ``(T + 1) x D`` normals), its acceptance uniform, its residual proposals and their
uniforms. Hence a row's tokens do not depend on the batch layout, AR and CSpD see the same noise at every position,
and *trajectory alignment* is simply the draft reading the target's noise lanes (with alignment off it reads its
own, independent lanes). Re-using a position's randomness after a rejection upstream is harmless: the outcomes
drawn with it were discarded without looking at it.

**Loop** (:func:`generate_cspd`, rows ragged, CFG as a doubled batch in both models):

1. Pre-fill: the first ``floor(prefill_ratio * 64)`` tokens come from the target, one forward each (AR).
2. Draft: the draft re-feeds its missing committed tokens, then samples ``gamma`` tokens one by one (one trunk
   forward and one T-step head run per token), recording each token's final-step ``mu_0``, ``sigma_0`` and
   ``S = sum_{t >= 2} log sigma_t``.
3. Verify: **one** target forward over ``[last committed token, drafts]`` and **one** batched head run over all
   ``gamma + 1`` positions of every row (the target's own aligned trajectory at each position: its ``mu_0``,
   ``sigma_0``, ``S`` and its sample, which serves as the bonus token), then one ``specdec_kernels.cspd_verify``
   call over every pending draft of the batch.
4. Commit. ``causal=True`` (default; the paper's Algorithm 1, exact on an AR model): the accepted prefix, then
   the op's residual sample at the first rejection, or the target's bonus token when every draft passed.
   ``causal=False`` (the released code's independent rule): every pending position keeps its draft when
   accepted and its residual sample otherwise, no bonus. On a causal model this is an approximation (a
   draft after a replaced one was judged in the replaced one's context).
"""

import math
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F

import specdec_kernels as sk

from ..decoding.rng import RowStreams
from .diffusion import denoise
from .model import ContinuousAR

# Lane bases (the discrete loop uses 0 .. 4 << 12); each purpose has 4096 lanes per (row, position).
LANE_TRAJECTORY = 8 << 12  # the target's diffusion noise; the draft's too under alignment
LANE_DRAFT_NOISE = 9 << 12  # the draft's own diffusion noise (alignment off)
LANE_ACCEPT = 10 << 12  # u_accept of the draft at this position
LANE_PROPOSAL = 11 << 12  # u_prop: max_tries x D uniforms of the residual's Gaussian proposals
LANE_RESIDUAL = 12 << 12  # u_ar: one uniform per residual try

DEFAULT_GAMMA, DEFAULT_PREFILL, DEFAULT_MAX_TRIES = 4, 0.05, 100
_U_MIN = 2.0**-24


def position_uniforms(keys: torch.Tensor, positions: torch.Tensor, lane_base: int, count: int) -> torch.Tensor:
    """``(B, P, count)`` float32 uniforms in [0, 1) for rows ``keys`` ``(B,)`` at token ``positions`` ``(B, P)``."""
    B, P = positions.shape
    streams = RowStreams(keys.repeat_interleave(P))
    return streams.uniform(positions.reshape(-1), lane_base, count).view(B, P, count)


def position_normals(keys: torch.Tensor, positions: torch.Tensor, lane_base: int, count: int) -> torch.Tensor:
    """Standard normals ``Phi^-1(u)`` of :func:`position_uniforms` (u clamped to [2^-24, 1 - 2^-24])."""
    u = position_uniforms(keys, positions, lane_base, count).clamp(_U_MIN, 1 - _U_MIN)
    return math.sqrt(2.0) * torch.erfinv(2 * u - 1)


def trajectory_noise(model: ContinuousAR, keys: torch.Tensor, positions: torch.Tensor, lane_base: int):
    """Diffusion noise ``(B * P, T + 1, D)`` of each (row, position) pair, rows major."""
    T, D = model.config.num_steps, model.token_dim
    return position_normals(keys, positions, lane_base, (T + 1) * D).view(-1, T + 1, D)


@dataclass
class Result:
    """``tokens`` ``(B, 64, D)`` standardised; ``stats`` per-run counters (see :func:`generate_cspd`)."""

    tokens: torch.Tensor
    stats: Dict = field(default_factory=dict)


def _rows(classes: torch.Tensor, null: int) -> torch.Tensor:
    return torch.cat([classes, torch.full_like(classes, null)])


def _conditions(model, tokens, rows_cls, slots, cache):
    """Feed ``slots`` ``(B, W)`` to both CFG halves; returns (z_cond, z_uncond), each ``(B, W, dim)``."""
    z = model.forward_slots(tokens.repeat(2, 1, 1), rows_cls, slots.repeat(2, 1), cache)
    return z.chunk(2)


def _cfg_denoise(model, z_c, z_u, noise, cfg_scale):
    return denoise(model.head, z_c, noise, z_u, cfg_scale)


@torch.no_grad()
def generate_ar(model: ContinuousAR, classes: torch.Tensor, keys: torch.Tensor, *, cfg_scale: float = 3.0) -> Result:
    """Plain AR sampling of ``(B, 64, D)`` standardised tokens for class ids ``classes`` ``(B,)`` with row keys
    ``keys`` ``(B,)``: one trunk forward and one T-step head run per token (CFG on epsilon)."""
    B, N, D = len(classes), model.num_tokens, model.token_dim
    tokens = torch.zeros(B, N, D, device=classes.device)
    cache = model.new_cache(2 * B, N + 1)
    rows_cls = _rows(classes, model.num_classes)
    for j in range(N):
        slots = torch.full((B, 1), j, device=classes.device)
        z_c, z_u = _conditions(model, tokens, rows_cls, slots, cache)
        noise = trajectory_noise(model, keys, slots, LANE_TRAJECTORY)
        tokens[:, j] = _cfg_denoise(model, z_c[:, 0], z_u[:, 0], noise, cfg_scale).x0
    return Result(tokens, {"target_forwards": torch.full((B,), N)})


class _TrunkDrafter:
    """A :class:`ContinuousAR` draft: its own trunk (fed the committed tokens) and its own diffusion head."""

    def __init__(self, draft: ContinuousAR, classes, num_slots: int, refeed: int):
        self.model, self.head, self.refeed = draft, draft.head, refeed
        self.rows_cls = _rows(classes, draft.num_classes)
        self.cache = draft.new_cache(2 * len(classes), num_slots)

    def observe(self, slots, z_c, z_u) -> None:
        """The target's conditions at ``slots`` (unused: this draft computes its own)."""

    def after_prefill(self, tokens, prefill: int) -> None:
        B = len(tokens)
        if prefill > 1:  # catch up on the pre-filled prefix (its last token comes with the first round)
            _conditions(self.model, tokens, self.rows_cls, torch.arange(prefill, device=tokens.device).expand(B, -1),
                        self.cache)

    def first(self, tokens, n):
        """Conditions ``(B, dim)`` x 2 of the first draft token of a round (at positions ``n``), after re-feeding
        the committed tokens the cache may lack."""
        slots = (n[:, None] + torch.arange(-self.refeed, 1, device=n.device)).clamp_min(0)
        z_c, z_u = _conditions(self.model, tokens, self.rows_cls, slots, self.cache)
        return z_c[:, -1], z_u[:, -1]

    def next(self, tokens, pos):
        """Conditions of the draft token at positions ``pos`` once token ``pos - 1`` is drafted."""
        z_c, z_u = _conditions(self.model, tokens, self.rows_cls, pos[:, None], self.cache)
        return z_c[:, 0], z_u[:, 0]


class _FeatureDrafter:
    """A :class:`~.feature_draft.FeatureDraft`: reads the target's conditions of the committed tokens (kept in
    ``feats``, CFG halves as rows ``[cond; uncond]``) and its own predictions for the drafted ones, and drafts with
    the target's head. Each round re-feeds the entries of the last ``gamma + 1`` committed tokens with the
    target's conditions (idempotent for entries already fed so)."""

    def __init__(self, draft, classes, num_slots: int, gamma: int):
        B = len(classes)
        self.model, self.head, self.gamma = draft, draft.head, gamma
        self.cache = draft.new_cache(2 * B, num_slots)
        self.feats = torch.zeros(2 * B, num_slots, draft.config.dim, device=classes.device)
        self.rows = torch.arange(2 * B, device=classes.device)

    def observe(self, slots, z_c, z_u) -> None:
        self.feats[self.rows[:, None], slots.repeat(2, 1)] = torch.cat([z_c, z_u])

    def after_prefill(self, tokens, prefill: int) -> None:
        if prefill < 1:
            raise ValueError("a feature draft needs at least one pre-filled token (prefill_ratio * 64 >= 1): its "
                             "first entry reads the target's condition of the token before")
        if prefill > 1:  # entries of the whole pre-filled prefix (each round re-feeds only the last gamma + 1)
            slots = torch.arange(1, prefill + 1, device=tokens.device).expand(2 * len(tokens), -1)
            self.model.forward_slots(tokens.repeat(2, 1, 1), self.feats, slots, self.cache)

    def _predict(self, tokens, slots):
        z = self.model.forward_slots(tokens.repeat(2, 1, 1), self.feats, slots.repeat(2, 1), self.cache)[:, -1]
        self.feats[self.rows, slots[:, -1].repeat(2)] = z  # read by the next draft token's entry
        return z.chunk(2)

    def first(self, tokens, n):
        return self._predict(tokens, (n[:, None] + torch.arange(-self.gamma, 1, device=n.device)).clamp_min(1))

    def next(self, tokens, pos):
        return self._predict(tokens, pos[:, None])


def is_feature_draft(draft) -> bool:
    from .feature_draft import FeatureDraft

    return isinstance(draft, FeatureDraft)


@torch.no_grad()
def generate_cspd(target: ContinuousAR, draft, classes: torch.Tensor, keys: torch.Tensor, *,
                  cfg_scale: float = 3.0, gamma: int = DEFAULT_GAMMA, prefill_ratio: float = DEFAULT_PREFILL,
                  align: bool = True, causal: bool = True, max_tries: int = DEFAULT_MAX_TRIES,
                  inner_temperature: Optional[float] = None) -> Result:
    """Continuous speculative decoding of ``(B, 64, D)`` tokens (module docstring for the steps).

    ``draft``: a :class:`ContinuousAR` (own trunk and head) or a :class:`~.feature_draft.FeatureDraft` of
    ``target`` (reads the target's conditions, drafts with the target's head; causal rule and pre-fill >= 1
    token only). ``align``: draft and target share every position's diffusion noise (off: independent noise);
    ``prefill_ratio``: share of leading tokens sampled by the target alone (0 switches pre-fill off); ``gamma``:
    drafts per verification; ``causal``: first-rejection truncation (paper) or independent per-token commits
    (released code); ``max_tries``: residual proposals per rejected token (``cspd_verify``'s K);
    ``inner_temperature``: passed to ``cspd_verify`` when given (None: the op's default 1, the paper's exact form;
    the released code uses 42, which flattens the density ratio and accepts almost everything: not exact).

    ``stats``: ``target_forwards`` ``(B,)`` (pre-fill forwards + verifications per row), ``verifications``,
    ``drafts_tested`` / ``drafts_accepted`` (every pending draft the op judged), ``accept_prefix`` (sum over
    verifications of the leading accepted drafts), ``fallbacks`` (residual tries exhausted), ``draft_tokens``.
    """
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    if not 0.0 <= prefill_ratio <= 1.0:
        raise ValueError(f"prefill_ratio must be in [0, 1], got {prefill_ratio}")
    if max_tries < 1 or max_tries * target.token_dim > 4096:
        raise ValueError(f"max_tries must be in [1, {4096 // target.token_dim}], got {max_tries}")
    feature = is_feature_draft(draft)
    if feature:
        if draft.target is not target:
            raise ValueError("the feature draft was built for another target model")
        if not causal:
            raise ValueError("a feature draft supports the causal rule only (the released rule replaces committed "
                             "tokens whose target conditions the draft has already read)")
    else:
        shared = lambda m: (m.config.num_steps, m.config.variance, m.config.final_std, m.token_dim)  # noqa: E731
        if shared(target) != shared(draft):
            raise ValueError(f"draft and target must share the diffusion schedule (steps, variance, final std) "
                             f"and the token dimension: {shared(draft)} != {shared(target)}")
    device = classes.device
    B, N, D = len(classes), target.num_tokens, target.token_dim
    tokens = torch.zeros(B, N + gamma + 1, D, device=device)  # drafts of the last rows may run past N
    num_slots = N + gamma + 2
    t_cache = target.new_cache(2 * B, num_slots)
    t_rows = _rows(classes, target.num_classes)
    # Re-fed committed entries: the causal loop's caches miss at most the last one or two committed tokens; the
    # independent loop may have replaced any of the last gamma drafts. Re-feeding a committed slot is idempotent.
    refeed = 1 if causal else gamma
    drafter = (_FeatureDrafter(draft, classes, num_slots, gamma) if feature
               else _TrunkDrafter(draft, classes, num_slots, refeed))
    rows = torch.arange(B, device=device)
    stats = {"target_forwards": torch.zeros(B, dtype=torch.long), "verifications": 0, "drafts_tested": 0,
             "drafts_accepted": 0, "accept_prefix": 0, "fallbacks": 0, "draft_tokens": 0}

    # 1. Pre-fill by the target, one forward per token.
    prefill = int(prefill_ratio * N)
    for j in range(prefill):
        slots = torch.full((B, 1), j, device=device)
        z_c, z_u = _conditions(target, tokens, t_rows, slots, t_cache)
        drafter.observe(slots, z_c, z_u)
        noise = trajectory_noise(target, keys, slots, LANE_TRAJECTORY)
        tokens[:, j] = _cfg_denoise(target, z_c[:, 0], z_u[:, 0], noise, cfg_scale).x0
    stats["target_forwards"] += prefill
    n = torch.full((B,), prefill, dtype=torch.long, device=device)  # committed tokens per row
    drafter.after_prefill(tokens, prefill)

    steps = torch.arange(gamma + 1, device=device)
    draft_lane = LANE_TRAJECTORY if align else LANE_DRAFT_NOISE
    while bool((n < N).any()):
        active = n < N
        num_pending = torch.where(active, (N - n).clamp(max=gamma), 0)  # drafts judged per row
        # 2. Draft gamma tokens.
        z_c, z_u = drafter.first(tokens, n)
        mu_q, s_q = torch.empty(B, gamma, D, device=device), torch.empty(B, gamma, D, device=device)
        sigma_q = torch.empty(B, gamma, D, device=device)
        for k in range(gamma):
            traj = denoise(drafter.head, z_c, trajectory_noise(target, keys, (n + k)[:, None], draft_lane), z_u,
                           cfg_scale)
            tokens[rows, n + k] = traj.x0
            mu_q[:, k], sigma_q[:, k], s_q[:, k] = traj.mu0, traj.sigma0, traj.log_sigma_sum
            if k + 1 < gamma:
                z_c, z_u = drafter.next(tokens, n + k + 1)
        stats["draft_tokens"] += int(num_pending.sum())

        # 3. One target forward over [last committed, drafts] and one batched head run over gamma + 1 positions.
        slots = (n[:, None] + torch.arange(-refeed + 1, gamma + 1, device=device)).clamp_min(0)
        z_c, z_u = _conditions(target, tokens, t_rows, slots, t_cache)
        drafter.observe(slots, z_c, z_u)
        z_c, z_u = z_c[:, -(gamma + 1):].flatten(0, 1), z_u[:, -(gamma + 1):].flatten(0, 1)
        positions = n[:, None] + steps
        p = _cfg_denoise(target, z_c, z_u, trajectory_noise(target, keys, positions, LANE_TRAJECTORY), cfg_scale)
        own, mu_p, sigma_p, s_p = (t.view(B, gamma + 1, D) for t in p)
        stats["target_forwards"] += active.long().cpu()
        stats["verifications"] += int(active.sum())

        pending = steps[None, :gamma] < num_pending[:, None]  # (B, gamma)
        pos = positions[:, :gamma]
        u_accept = position_uniforms(keys, pos, LANE_ACCEPT, 1)[pending][:, 0]
        u_prop = position_uniforms(keys, pos, LANE_PROPOSAL, max_tries * D)[pending].view(-1, max_tries, D)
        u_ar = position_uniforms(keys, pos, LANE_RESIDUAL, max_tries)[pending]
        drafts = tokens[rows[:, None], pos]
        options = {} if inner_temperature is None else {"inner_temperature": inner_temperature}
        out, accepted, fallback = sk.cspd_verify(
            drafts[pending], mu_q[pending], sigma_q[pending], mu_p[:, :gamma][pending], sigma_p[:, :gamma][pending],
            s_q[pending], s_p[:, :gamma][pending], u_accept, u_prop, u_ar, **options)
        acc = torch.zeros(B, gamma, dtype=torch.bool, device=device)
        acc[pending] = accepted
        resampled = drafts.clone()
        resampled[pending] = out
        stats["drafts_tested"] += int(pending.sum())
        stats["drafts_accepted"] += int(accepted.sum())
        stats["fallbacks"] += int(fallback.sum())

        # 4. Commit.
        lead = acc.long().cumprod(1).sum(1)  # leading accepted drafts
        stats["accept_prefix"] += int(lead[active].sum())
        if causal:
            at = n + lead  # position of the residual / bonus token
            bonus = lead == num_pending
            new = torch.where(bonus[:, None], own[rows, lead], resampled[rows, lead.clamp(max=gamma - 1)])
            has_new = active & (at < N)
            tokens[rows[has_new], at[has_new]] = new[has_new]
            n = torch.where(active, at + has_new.long(), n)
        else:
            tokens[rows[:, None], pos] = torch.where(pending[..., None], resampled, drafts)
            n = n + num_pending
    return Result(tokens[:, :N].clone(), stats)


def decode_images(model: ContinuousAR, vq, tokens: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Standardised tokens ``(B, 64, D)`` -> images ``(B, 1, 32, 32)`` in [-1, 1] through the shipped VQ decoder.

    The latents are projected back onto the unit sphere the encoder's latents live on (the decoder was trained on
    unit-norm code vectors); no quantisation."""
    out = []
    with torch.no_grad():
        for i in range(0, len(tokens), batch):
            lat = F.normalize(model.to_latents(tokens[i : i + batch].to(model.latent_mean.device)), dim=-1)
            out.append(vq.decode_latents(lat.to(next(vq.parameters()).device)).clamp(-1, 1).cpu())
    return torch.cat(out)


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of ``fn(*args, **kwargs)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
