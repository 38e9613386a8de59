"""Reference: LANTERN / LANTERN++ relaxed mass of a candidate (docs/ALGORITHMS.md §3.4)."""

import math
from typing import Optional, Tuple

import torch

from .._methods import ROW_BAD_ID, ROW_BAD_NEIGHBOR, ROW_BAD_PROB
from ._status import bad_prob


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
    # (R, k): x's neighbours, nearest first; ids outside [0, V) only occur in rows the caller reports as bad,
    # so they are clamped to stay in bounds and their result is discarded.
    rows = neighbors[x].long().clamp(0, r.shape[1] - 1)
    prefix = torch.cumsum(r64.gather(1, rows), dim=1)  # c_1 .. c_k
    # (lam - 1) * r(x) is NaN for lam = inf and r(x) = 0: then nothing merges (NaN fails every comparison).
    budget = torch.full_like(rx, delta) if delta is not None else (lam - 1.0) * rx
    # m* = the longest prefix with c_m <= budget (a cumulative AND: a NaN or a negative entry ends it as a
    # sequential scan would).
    merged = torch.cumprod((prefix <= budget[:, None]).to(torch.int64), dim=1).sum(dim=1)
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
    An ``x`` outside [0, V) gives ``p_tilde = NaN, merged = -2``; a table row of x with an id outside [0, V) or
    x itself gives ``p_tilde = NaN, merged = -4``; a NaN, inf or negative entry among those the sequential scan
    reads (p(x) and the neighbours n_1 .. n_{min(m* + 1, k)}: the merged prefix and the entry that ended it) gives
    ``p_tilde = NaN, merged = -6`` (the row codes of docs/ALGORITHMS.md §3.8).
    """
    vocab = p.shape[1]
    x = x.long()
    bad_x = (x < 0) | (x >= vocab)
    safe_x = torch.where(bad_x, 0, x)
    table_row = neighbors[safe_x].long()
    bad_nb = ((table_row < 0) | (table_row >= vocab) | (table_row == safe_x[:, None])).any(-1) & ~bad_x
    p_tilde, merged = relaxed_mass64(p, safe_x, neighbors, delta, lam)
    p32 = p.to(torch.float32)
    safe_row = table_row.clamp(0, vocab - 1)
    read = torch.arange(table_row.shape[1], device=p.device) <= merged[:, None]  # n_1 .. n_{m* + 1}
    bad_values = bad_prob(p32.gather(1, safe_x[:, None]).squeeze(1))
    bad_values |= (bad_prob(p32.gather(1, safe_row)) & read).any(-1)
    code = torch.where(bad_values, ROW_BAD_PROB, 0)
    code = torch.where(bad_x, ROW_BAD_ID, torch.where(bad_nb, ROW_BAD_NEIGHBOR, code))
    p_tilde = torch.where(code != 0, math.nan, p_tilde)
    merged = torch.where(code != 0, -code, merged)
    return p_tilde.to(torch.float32), merged.to(torch.int32)
