"""Reference: the dynamic group of Grouped Speculative Decoding (arXiv 2508.07747; docs/ALGORITHMS.md §3.3)."""

import math
from typing import Optional, Tuple

import torch

from .._methods import ROW_BAD_ID, ROW_BAD_PROB, gsd_window
from ._status import bad_prob


def group_mass_checked64(
    p: torch.Tensor,
    q: Optional[torch.Tensor],
    x: torch.Tensor,
    embeddings: Optional[torch.Tensor],
    rank_window: Tuple[int, int],
    p_thr: float,
    d_thr: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 core shared with the chain reference: ``(P_G [R], Q_G [R])`` in float64 and, per row, whether a value it
    reads is bad (code 6 of ``gsd_group_mass``): a NaN,
    inf or negative entry of the ranked row p or of q at a group member, or a NaN / inf embedding row whose
    distance is computed (x's and each window member's that passes the probability filter)."""
    rows, vocab = p.shape
    h_lo, h_hi = gsd_window(*rank_window, vocab)  # a wider window reaches no further rank
    p32 = p.to(torch.float32)
    # Rank order: p descending, ties by token id ascending (a stable descending sort keeps id order).
    order = torch.sort(p32, dim=1, descending=True, stable=True).indices
    rank_of = torch.empty_like(order)
    rank_of.scatter_(1, order, torch.arange(vocab, device=p.device).expand(rows, vocab))
    rank_x = rank_of.gather(1, x[:, None])  # (R, 1)
    offsets = torch.arange(-h_hi, h_lo + 1, device=p.device)  # h_hi more-probable ranks ... h_lo less
    window_ranks = rank_x + offsets  # (R, h_hi + 1 + h_lo)
    in_range = (window_ranks >= 0) & (window_ranks < vocab)
    members = order.gather(1, window_ranks.clamp(0, vocab - 1))  # token ids in window order
    px = p32.gather(1, x[:, None])
    pm = p32.gather(1, members)
    keep = in_range & ((pm - px).abs() < p_thr)
    bad = bad_prob(p32).any(-1)
    if embeddings is not None:
        compared = keep.clone()
        compared[:, h_hi] = False  # x's own distance is never computed
        row_bad = ~torch.isfinite(embeddings).all(-1)  # (V,)
        bad |= ((row_bad[members] | row_bad[x][:, None]) & compared).any(-1)
        emb = embeddings.to(torch.float32)
        diff = emb[members] - emb[x][:, None, :]
        dist = torch.zeros(diff.shape[:2], dtype=torch.float32, device=p.device)
        for d in range(diff.shape[-1]):  # sequential float32 accumulation, as every kernel does
            dist = dist + diff[..., d] * diff[..., d]
        keep &= dist < d_thr
    keep[:, h_hi] = True  # x (the window's centre) is always in its own group
    group_p = (pm.to(torch.float64) * keep).sum(1)
    if q is None:
        group_q = torch.ones_like(group_p)
    else:
        q_members = q.to(torch.float32).gather(1, members)
        bad |= (bad_prob(q_members) & keep).any(-1)
        group_q = torch.where(keep, q_members.to(torch.float64), 0.0).sum(1)  # a q outside G is never read
    return group_p, group_q, bad


def gsd_group_mass(
    p: torch.Tensor,
    q: Optional[torch.Tensor],
    x: torch.Tensor,
    *,
    embeddings: Optional[torch.Tensor] = None,
    rank_window: Tuple[int, int] = (7, 6),
    p_thr: float = 0.15,
    d_thr: float = 0.5,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Probability mass of GSD's dynamic group around each draft under ``p`` and ``q``.

    ``p`` and ``q`` are ``(R, V)`` (``q`` None means one-hot drafts, so ``group_q`` = 1), ``x`` int64
    ``(R,)``. The window holds the tokens whose rank (p descending, ties by lower id) lies in
    ``[rank(x) - h_hi, rank(x) + h_lo]`` for ``rank_window = (h_lo, h_hi)``; a member j != x stays in the
    group iff ``|p(j) - p(x)| < p_thr`` and (with ``embeddings`` ``(V, D)``) ``||e_x - e_j||^2 < d_thr``.
    x is always a member. Returns float32 ``(group_p, group_q)``, each ``(R,)``.
    A bad row is reported as ``group_p = -code, group_q = NaN`` (docs/ALGORITHMS.md §3.8): code 2 for an ``x``
    outside [0, V) (nothing out of range is read), code 6 for a NaN, inf or negative entry of the ranked row p
    or of q at a group member, or a NaN / inf embedding row whose distance is computed.
    """
    x = x.long()
    bad_x = (x < 0) | (x >= p.shape[1])
    group_p, group_q, bad_values = group_mass_checked64(p, q, torch.where(bad_x, 0, x), embeddings, rank_window,
                                                         p_thr, d_thr)
    code = torch.where(bad_x, ROW_BAD_ID, torch.where(bad_values, ROW_BAD_PROB, 0))
    group_p = torch.where(code != 0, -code.to(torch.float64), group_p)
    group_q = torch.where(code != 0, math.nan, group_q)
    return group_p.to(torch.float32), group_q.to(torch.float32)
