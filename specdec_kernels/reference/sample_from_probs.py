"""Reference: one token per row from non-negative weights by inverse-CDF (docs/ALGORITHMS.md §1, §3.10)."""

import torch

from ._sampling import inverse_cdf

#: Row status codes (docs/ALGORITHMS.md §3.8): a uniform outside [0, 1], and a weight row that is unusable.
BAD_UNIFORM = 5
BAD_PROBABILITY = 6


def sample_from_probs(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample ``token[b] = inverse_cdf(p[b], u[b])``: the smallest ``j`` with ``cumsum(p[b])[j] > u[b] * sum(p[b])``
    (float64 sums), else the largest ``j`` with ``p[b, j] > 0``; a zero-weight token is never returned.

    ``p`` is ``(..., vocab_size)`` float (unnormalised weights >= 0), ``u`` has ``p``'s leading shape, float32 in
    [0, 1] (1.0 takes the last token with non-zero weight). Returns int64 of ``u``'s shape. A row is not sampled but
    reported as ``-code`` (docs/ALGORITHMS.md §3.8) when its uniform lies outside [0, 1] or is NaN (code 5), or when
    a weight is NaN, inf or negative, or all weights are zero (code 6); code 5 is checked first.
    """
    lead = p.shape[:-1]
    rows = p.reshape(-1, p.shape[-1]).to(torch.float64)
    flat_u = u.reshape(-1)
    good_u = (flat_u >= 0) & (flat_u <= 1)  # NaN fails both; 1.0 takes the last non-zero weight (§3.1)
    finite = torch.isfinite(rows).all(-1) & (rows >= 0).all(-1)
    good_p = finite & (torch.where(torch.isfinite(rows), rows, 0.0).sum(-1) > 0)
    token = inverse_cdf(torch.where(good_p[:, None], rows, 1.0), torch.where(good_u, flat_u, 0.0))
    token = torch.where(good_p, token, -BAD_PROBABILITY)
    token = torch.where(good_u, token, -BAD_UNIFORM)
    return token.reshape(lead)
