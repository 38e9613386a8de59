"""Inverse-CDF sampling shared by every reference op (docs/ALGORITHMS.md §1)."""

import torch


def inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample one index per row of non-negative weights ``w`` with uniforms ``u``.

    ``w`` is ``(rows, vocab_size)`` (any float dtype), ``u`` is ``(rows,)`` float32 in [0, 1] (at 1.0 no cumulative
    sum exceeds the total, so the draw is the last index with non-zero weight: the limit u -> 1).
    Returns the smallest ``j`` with ``cumsum(w)[j] > u * sum(w)`` (accumulated in float64); if rounding
    leaves none, the largest ``j`` with ``w[j] > 0``. No normalisation is needed, and a zero-weight token
    is never returned. Rows whose weights are all zero return 0 (callers never pass such rows).

    Cross-backend numerics (docs/ALGORITHMS.md §3.8): every backend sums in float64 but may
    use another summation order (blocked or parallel scans), so a token can differ from this reference
    only when ``u * sum(w)`` lies within float64 rounding of a cumulative-sum boundary.
    """
    w64 = w.to(torch.float64)
    cdf = torch.cumsum(w64, dim=-1)
    threshold = u.to(torch.float64) * cdf[..., -1]
    above = cdf > threshold.unsqueeze(-1)
    vocab = torch.arange(w.shape[-1], device=w.device)
    first_above = torch.where(above, vocab, w.shape[-1]).amin(dim=-1)
    last_nonzero = torch.where(w64 > 0, vocab, -1).amax(dim=-1).clamp_min(0)
    return torch.where(first_above < w.shape[-1], first_above, last_nonzero)
