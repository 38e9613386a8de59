"""Reference: chain verification for exact, GSD, LANTERN and typical acceptance (docs/ALGORITHMS.md §3.2-3.4,
§3.11)."""

from typing import Optional, Tuple

import torch

from ._sampling import inverse_cdf
from ._status import ROW_BAD_PROB, bad_prob, chain_status
from .gsd_group_mass import group_mass_checked64
from .lantern_relaxed_mass import relaxed_mass64


def verify_chain(
    p: torch.Tensor,
    q: Optional[torch.Tensor],
    draft: torch.Tensor,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
    *,
    num_drafts: Optional[torch.Tensor] = None,
    method: str = "exact",
    neighbors: Optional[torch.Tensor] = None,
    delta: Optional[float] = None,
    lam: Optional[float] = None,
    embeddings: Optional[torch.Tensor] = None,
    rank_window: Tuple[int, int] = (7, 6),
    p_thr: float = 0.15,
    d_thr: float = 0.5,
    epsilon: float = 0.09,
    alpha: float = 0.3,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Verify a ragged batch of draft chains; see :func:`specdec_kernels.verify_chain` for the contract.

    Per row b with n = num_drafts[b]: draft i is accepted while its test passes (stop at the first
    failure); the recovered token is sampled from the residual at the first rejected position a, the
    bonus token from ``p[b, n]`` when all n drafts pass. Tests, all in float64 with exact products:

    * exact:   u * q(x) <  p(x)                       (q None: q(x) = 1)
    * gsd:     u * Q_G  <  P_G                         (group masses, gsd_group_mass)
    * lantern: p~(x) > 0 and u * q(x) <= p~(x)         (p~ from lantern_relaxed_mass)
    * typical: p(x) > epsilon or p(x) > alpha * exp(-H(p[b, i]))   (u and q unused; H in float64)

    Residual at a (weights, never normalised): max(0, p~_x - q) where p~_x is p with LANTERN's merged
    neighbours' mass moved onto x (p~_x = p for exact and gsd) and q is one-hot at x when None; if it
    sums to zero, p[b, a] itself. Typical samples p[b, a] itself (q's row is not read).

    Rows with a structural problem, or a bad value among those read, come back as ``accept_len = 0``,
    ``next_token = -code`` (``reference/_status.py``); nothing out of range is ever indexed.
    """
    batch, num_slots, vocab = p.shape
    max_drafts = num_slots - 1
    device = p.device
    if num_drafts is None:
        num_drafts = torch.full((batch,), max_drafts, dtype=torch.int64, device=device)
    num_drafts = num_drafts.long()
    status = chain_status(p, q, draft, u_accept, u_sample, num_drafts, neighbors if method == "lantern" else None)
    # A row with a structural problem is not verified: it runs with no drafts and is overwritten at the end.
    num_drafts = torch.where(status == 0, num_drafts, 0)

    # Phase 1: every draft's test, all positions at once (rows flattened to B * L).
    flat_p = p[:, :max_drafts].reshape(-1, vocab)
    used = torch.arange(max_drafts, device=device) < num_drafts[:, None]
    flat_x = torch.where(used, draft, 0).reshape(-1).long()  # ids past num_drafts are ignored, never read
    flat_q = None if q is None else q.reshape(-1, vocab)
    px = flat_p.to(torch.float64).gather(1, flat_x[:, None]).squeeze(1)
    qx = torch.ones_like(px) if flat_q is None else flat_q.to(torch.float64).gather(1, flat_x[:, None]).squeeze(1)
    u = u_accept.reshape(-1).to(torch.float64)
    merged = torch.zeros_like(flat_x)
    group_bad = torch.zeros_like(px, dtype=torch.bool)  # GSD: a bad q of a member or embedding row it compared
    if method == "exact":
        passed = u * qx < px
    elif method == "gsd":
        group_p, group_q, group_bad = group_mass_checked64(flat_p, flat_q, flat_x, embeddings, rank_window, p_thr,
                                                           d_thr)
        passed = u * group_q < group_p
    elif method == "lantern":
        p_tilde, merged = relaxed_mass64(flat_p, flat_x, neighbors, delta, lam)
        passed = (p_tilde > 0) & (u * qx <= p_tilde)
    elif method == "typical":
        rows64 = flat_p.to(torch.float64)
        positive = rows64 > 0
        entropy = torch.where(positive, -rows64 * torch.log(torch.where(positive, rows64, 1.0)), 0.0).sum(-1)
        passed = (px > epsilon) | (px > alpha * torch.exp(-entropy))
    else:
        raise ValueError(f"unknown method {method!r}")

    # Phase 2: accept prefix = cumulative AND over the row's own drafts.
    passed = passed.view(batch, max_drafts) & used
    accept_len = torch.cumprod(passed.to(torch.int64), dim=1).sum(dim=1)

    # Phase 3: one residual (or bonus) row per batch row: the row at index a in both cases.
    rows = torch.arange(batch, device=device)
    target = p[rows, accept_len].to(torch.float64)
    rejected = accept_len < num_drafts
    at = accept_len.clamp(max=max(max_drafts - 1, 0))
    if max_drafts > 0:
        x_rej = flat_x.view(batch, max_drafts)[rows, at]
        if q is None:
            q_rej = torch.nn.functional.one_hot(x_rej, vocab).to(torch.float64)
        else:
            q_rej = q[rows, at].to(torch.float64)
        relaxed = target.clone()
        if method == "lantern":
            # Move the merged neighbours' mass onto x (LANTERN's p~_x) before subtracting q.
            k_rej = merged.view(batch, max_drafts)[rows, at]
            nbrs = neighbors[x_rej].long().clamp(0, vocab - 1)  # bad tables only occur in rows already flagged
            moved = torch.arange(nbrs.shape[1], device=device) < k_rej[:, None]
            gained = (target.gather(1, nbrs) * moved).sum(1)  # a repeated code counts once per occurrence
            relaxed[rows[:, None].expand_as(nbrs)[moved], nbrs[moved]] = 0.0
            relaxed[rows, x_rej] += gained
        residual = (relaxed - q_rej).clamp_min(0.0)
        residual = torch.where(residual.sum(1, keepdim=True) > 0, residual, target)
        weights = target if method == "typical" else torch.where(rejected[:, None], residual, target)
    else:
        weights = target
    next_token = inverse_cdf(weights, u_sample)

    # Code 6 on the values the walk read: the tested entries p(x), q(x) (GSD ranks, so reads, the whole row),
    # and the row sampled from (with q's row for a residual), which must also carry mass.
    tested = used & (torch.arange(max_drafts, device=device) <= accept_len[:, None])
    bad_read = bad_prob(px) | bad_prob(qx) | group_bad
    if method in ("gsd", "typical"):  # GSD's ranking and typical's entropy read the whole row
        bad_read = bad_read | bad_prob(flat_p).any(-1)
    bad_value = (bad_read.view(batch, max_drafts) & tested).any(-1)
    bad_value |= bad_prob(target).any(-1) | ~(target.sum(-1) > 0)
    if q is not None and max_drafts > 0 and method != "typical":
        bad_value |= rejected & bad_prob(q[rows, at]).any(-1)
    status = torch.where((status == 0) & bad_value, ROW_BAD_PROB, status)
    bad_row = status != 0
    return torch.where(bad_row, 0, accept_len), torch.where(bad_row, -status, next_token)
