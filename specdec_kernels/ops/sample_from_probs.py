"""Public op: one token per row from probability weights, by inverse-CDF on a passed uniform."""

import torch

from .. import reference
from ..reference.sample_from_probs import BAD_PROBABILITY, BAD_UNIFORM

_FLOAT = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_PROBLEMS = {BAD_UNIFORM: "u is outside [0, 1] (or NaN)",
             BAD_PROBABILITY: "p holds a NaN, inf or negative weight, or only zeros"}


def sample_from_probs(p: torch.Tensor, u: torch.Tensor, *, backend: str = "auto", validate=None) -> torch.Tensor:
    """Sample one token per row of ``p`` with the rule every verification op ends with (docs/ALGORITHMS.md §1, §3.10).

    Semantics: ``token[b]`` = the smallest ``j`` with ``cumsum(p[b])[j] > u[b] * sum(p[b])`` (float64 sums), or,
    when rounding leaves none, the largest ``j`` with ``p[b, j] > 0``. The weights need not be normalised and a
    zero-weight token is never returned. The same row and uniform give the token ``verify_chain`` returns for a row
    with zero drafts.

    Parameters
    ----------
    p : ``(..., vocab_size)`` float32 / float16 / bfloat16 / float64
        Non-negative weights (processed probabilities). Read only.
    u : ``p.shape[:-1]`` float32
        One uniform in [0, 1] per row (1.0 takes the last token with non-zero weight).
    backend : {"auto", "reference"}
        Only the reference exists so far; the kernels follow the per-op layout (docs/CONTRIBUTING.md §4).
    validate : None, True or False
        ``None`` / ``True``: a bad row raises a ``ValueError`` naming the argument and the row. ``False``: bad
        rows come back as ``-code`` (5: bad uniform, 6: bad weights; docs/ALGORITHMS.md §3.8).

    Returns
    -------
    token : ``u.shape`` int64

    Raises
    ------
    ValueError
        Wrong shapes, dtypes or devices; with ``validate`` not False, a bad row.

    Examples
    --------
    >>> sample_from_probs(torch.tensor([[0.0, 0.5, 0.0, 0.5]]), torch.tensor([0.5]))
    tensor([3])
    """
    if not isinstance(p, torch.Tensor) or p.dim() < 1 or p.dtype not in _FLOAT:
        raise ValueError(f"p must be a float tensor (..., vocab_size), got {getattr(p, 'dtype', type(p))}")
    if p.shape[-1] < 1:
        raise ValueError("p must have at least one entry per row (vocab_size >= 1)")
    if not isinstance(u, torch.Tensor) or u.dtype != torch.float32 or tuple(u.shape) != tuple(p.shape[:-1]):
        raise ValueError(f"u must be float32 of shape {tuple(p.shape[:-1])}, got "
                         f"{getattr(u, 'dtype', type(u))} {tuple(getattr(u, 'shape', ()))}")
    if u.device != p.device:
        raise ValueError(f"u must be on p's device ({p.device}), got {u.device}")
    if backend not in ("auto", "reference"):
        raise ValueError(f"sample_from_probs has only the reference backend so far; got backend={backend!r}")
    token = reference.sample_from_probs(p, u)
    if validate is not False and token.numel() > 0:
        bad = token.reshape(-1) < 0
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            code = -int(token.reshape(-1)[row])
            raise ValueError(f"row {row}: {_PROBLEMS[code]}")
    return token
