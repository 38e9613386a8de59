"""Public op: GSD's dynamic group masses (arXiv 2508.07747)."""

from typing import Optional, Tuple

import torch

from .. import _validation as v
from .. import reference
from ._dispatch import run


def gsd_group_mass(
    p: torch.Tensor,
    q: Optional[torch.Tensor],
    x: torch.Tensor,
    *,
    embeddings: Optional[torch.Tensor] = None,
    rank_window: Tuple[int, int] = (7, 6),
    p_thr: float = 0.15,
    d_thr: float = 0.5,
    backend: str = "auto",
    validate: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum ``p`` and ``q`` over Grouped Speculative Decoding's dynamic group around each draft (arXiv 2508.07747).

    Semantics: rank tokens by p descending (ties: lower id first). The window holds the ``h_hi`` tokens
    ranked just above x, x, and the ``h_lo`` just below (``rank_window = (h_lo, h_hi)``, clipped to the
    vocabulary). A member j != x stays in the group G iff ``|p(j) - p(x)| < p_thr`` and, with an embedding
    table, ``||e_j - e_x||^2 < d_thr``; x always belongs. GSD accepts x iff ``u * Q_G < P_G``.

    Parameters
    ----------
    p : ``(rows, vocab_size)`` float32/float16/bfloat16; q : same or None (one-hot drafts: ``group_q = 1``);
    x : ``(rows,)`` int64; embeddings : ``(vocab_size, dim)`` float32 or None (no distance filter; pass the
    L2-normalised VQ codebook for the project default); rank_window : (h_lo, h_hi) ints >= 0 (capped at
    ``vocab_size - 1``: a wider window reaches no further rank); p_thr, d_thr : numbers >= 0 (inf included).
    backend : {"auto", "reference", "cpu", "triton", "cuda"}
    validate : None (default), True or False
        Every backend reads only in-range entries and reports a bad row as ``group_p = -code, group_q = NaN``:
        code 2 for an ``x`` outside [0, V); code 6 for a NaN / inf / negative entry of the ranked row ``p[r]``
        or of ``q`` at a group member, or a NaN / inf embedding row whose distance is computed (x's and each
        window member's that passes the probability filter). ``None``: shape and parameter checks, then a
        ValueError naming the argument and the first bad row (one check over the R outputs; CUDA / compile: a
        device assertion). ``True`` adds NaN / inf / negative checks of the whole ``p`` and ``q``, every ``x``
        and finite embeddings before the kernel (one host synchronisation). ``False``: bad rows only come back
        as above.

    Returns
    -------
    group_p, group_q : ``(rows,)`` float32 (sums accumulated in float64); ``group_p < 0`` marks a bad row.

    Raises
    ------
    ValueError
        Shapes, dtypes, devices, NaN/negative probabilities, ids out of range, bad window or thresholds.

    Examples
    --------
    >>> p = torch.tensor([[0.4, 0.35, 0.25]])
    >>> gsd_group_mass(p, None, torch.tensor([1]), rank_window=(1, 1), p_thr=0.08)
    (tensor([0.7500]), tensor([1.]))
    """
    validate = v.validate_level(validate)
    v._tensor(p, "p", 2, v._PROB_DTYPES)
    h_lo, h_hi, p_thr, d_thr = v.gsd_params(rank_window, p_thr, d_thr, p.shape[1])
    if q is not None:
        v._tensor(q, "q", 2, (p.dtype,), p.device)
        v._shape(q, "q", tuple(p.shape))
    v._tensor(x, "x", 1, (torch.int64,), p.device)
    v._shape(x, "x", (p.shape[0],))
    if embeddings is not None:
        v.embedding_shapes(embeddings, p.shape[1], p.device)
    if validate:
        checks = v.new_checks()
        checks.probabilities(p, "p")
        if q is not None:
            checks.probabilities(q, "q")
        checks.ids(x, "x", p.shape[1])
        if embeddings is not None:
            checks.add(torch.isfinite(embeddings), "embeddings contains NaN or inf")
        checks.run()
    group_p, group_q = run(
        "gsd_group_mass",
        backend,
        p.device,
        lambda: reference.gsd_group_mass(
            p, q, x, embeddings=embeddings, rank_window=(h_lo, h_hi), p_thr=float(p_thr), d_thr=float(d_thr)
        ),
        (p, q, x, embeddings, h_lo, h_hi, float(p_thr), float(d_thr)),
    )
    if validate is not False:
        v.raise_on_bad_rows("gsd_group_mass", group_p, validate)
    return group_p, group_q
