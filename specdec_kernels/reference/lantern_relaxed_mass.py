"""Reference: LANTERN / LANTERN++ relaxed mass of a candidate (docs/ALGORITHMS.md §3.4)."""

from typing import Optional, Tuple

import torch


def relaxed_mass64(
    r: torch.Tensor,
    x: torch.Tensor,
    neighbors: torch.Tensor,
    delta: Optional[float],
    lam: Optional[float],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 core shared by the chain and tree references: ``(p_tilde [R] f64, merged [R] int64)``.

    ``r`` is ``(R, V)``; prefix sums run in table order in float64; the budget is ``delta`` or
    ``(lam - 1) * r(x)``; ``merged`` is the longest prefix whose mass stays within the budget.
    """
    r64 = r.to(torch.float64)
    rx = r64.gather(1, x[:, None]).squeeze(1)
    rows = neighbors[x].long()  # (R, k): x's neighbours, nearest first
    prefix = torch.cumsum(r64.gather(1, rows), dim=1)  # c_1 .. c_k
    budget = torch.full_like(rx, delta) if delta is not None else (lam - 1.0) * rx
    # c_m is non-decreasing, so {m : c_m <= budget} is a prefix and its size is m*.
    merged = (prefix <= budget[:, None]).sum(dim=1)
    c_star = torch.where(merged > 0, prefix.gather(1, (merged - 1).clamp_min(0)[:, None]).squeeze(1), 0.0)
    return rx + c_star, merged


def lantern_relaxed_mass(
    p: torch.Tensor,
    x: torch.Tensor,
    neighbors: torch.Tensor,
    *,
    delta: Optional[float] = None,
    lam: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relaxed probability of each candidate: its own mass plus the longest budgeted prefix of neighbours.

    ``p`` is ``(R, V)``, ``x`` int64 ``(R,)``, ``neighbors`` int32 ``(V, k)`` (nearest first). Exactly one
    of ``delta`` (LANTERN, TV budget in [0, 1]) or ``lam`` (LANTERN++, ratio >= 1) is given.
    Returns ``p_tilde`` float32 ``(R,)`` = p(x) + c_{m*} and ``merged`` int32 ``(R,)`` = m*.
    """
    p_tilde, merged = relaxed_mass64(p, x, neighbors, delta, lam)
    return p_tilde.to(torch.float32), merged.to(torch.int32)
