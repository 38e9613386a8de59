"""Draft-side sampling with the kernels' inverse-CDF rule (docs/ALGORITHMS.md §1).

Drawing a draft is not verification, but using the same rule everywhere keeps one definition of "sample":
``sample`` calls :func:`specdec_kernels.verify_chain` with zero drafts, which is exactly an inverse-CDF draw.
"""

import torch

import specdec_kernels as sk


def sample(probs: torch.Tensor, u: torch.Tensor, *, validate: bool = False) -> torch.Tensor:
    """One token per row of ``probs`` ``(rows, vocab_size)`` (unnormalised weights ok) with uniforms ``(rows,)``."""
    rows = probs.shape[0]
    empty = torch.zeros(rows, 0, dtype=torch.int64, device=probs.device)
    _, token = sk.verify_chain(
        probs.unsqueeze(1).float().contiguous(),
        None,
        empty,
        torch.zeros(rows, 0, device=probs.device),
        u.float().contiguous(),
        num_drafts=torch.zeros(rows, dtype=torch.int64, device=probs.device),
        validate=validate,
    )
    return token


def sample_without_replacement(probs: torch.Tensor, u: torch.Tensor, *, validate: bool = False) -> torch.Tensor:
    """``count`` draws per row without replacement, in draw order (``u`` is ``(rows, count)``).

    The j-th draw is an inverse-CDF sample from ``probs`` with the earlier draws removed (no renormalisation
    needed). If the support runs out, the row repeats its first draw; tree verification skips repeated
    sibling tokens, so such a node is inert.
    """
    weights = probs.float().clone()
    out = []
    for j in range(u.shape[1]):
        exhausted = weights.sum(-1) <= 0
        tok = sample(torch.where(exhausted[:, None], probs.float(), weights), u[:, j], validate=validate)
        if out:
            tok = torch.where(exhausted, out[0], tok)
        weights.scatter_(1, tok[:, None], 0.0)
        out.append(tok)
    return torch.stack(out, dim=1) if out else torch.zeros(probs.shape[0], 0, dtype=torch.int64)
