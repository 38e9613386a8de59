"""Public ops: the LANTERN neighbour table and relaxed mass (arXiv 2410.03355, 2502.06352)."""

from typing import Optional, Tuple

import torch

from .. import _validation as v
from .. import reference
from ._dispatch import run


def neighbor_table(
    codebook: torch.Tensor, k: int, *, normalize: bool = True, backend: str = "auto",
    validate: Optional[bool] = None,
) -> torch.Tensor:
    """Find the k nearest codes of every VQ code (LANTERN's latent neighbourhood, arXiv 2410.03355).

    Parameters
    ----------
    codebook : ``(vocab_size, dim)`` float32
        Codebook embeddings. Built once per model, never per step.
    k : int in [1, vocab_size - 1]
        Neighbours per code.
    normalize : bool
        L2-normalise rows first (default; the geometry an l2-normalised VQ decoder sees). ``False`` uses
        raw rows, as LANTERN's released table script does.
    backend : {"auto", "reference", "cpu", "triton", "cuda"}
    validate : None (default), True or False
        Always: a 2-D float32 codebook and k an int in [1, vocab_size - 1] (no backend reads out of bounds,
        whatever the codebook holds). Every backend reports a code whose codebook row holds NaN or inf as a
        table row of ``-6`` (row status code 6, found in one O(vocab_size * dim) pass). ``None``: then a
        ValueError naming the first such code (CPU: one check over the vocab_size first entries; CUDA and
        ``torch.compile``: an asynchronous device assertion). ``True`` checks every entry before the kernel (one
        host synchronisation). ``False``: the rows come back as ``-6``; the other rows are in range (distances to
        a bad code are NaN and rank last). Distances that overflow float32 are inf and still ordered by id; a
        code is never its own neighbour.

    Returns
    -------
    ``(vocab_size, k)`` int32: row c lists the k codes nearest to c by ascending Euclidean distance,
    self excluded, equal distances in ascending id (``-6`` throughout for a code with a non-finite row).

    Raises
    ------
    ValueError
        Not a 2-D float32 tensor, NaN/inf entries, or k outside [1, vocab_size - 1].

    Examples
    --------
    >>> neighbor_table(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), 1).tolist()
    [[1], [0], [1]]
    """
    validate = v.validate_level(validate)
    v._tensor(codebook, "codebook", 2, (torch.float32,))
    n = codebook.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n - 1:
        raise ValueError(f"k must be an int in [1, {n - 1}] (codebook has {n} codes), got {k!r}")
    if validate:
        checks = v.new_checks()
        checks.add(torch.isfinite(codebook), "codebook contains NaN or inf")
        checks.run()
    table = run(
        "neighbor_table",
        backend,
        codebook.device,
        lambda: reference.neighbor_table(codebook, k, normalize=normalize),
        (codebook, k, bool(normalize)),
    )
    if validate is not False:
        v.raise_on_bad_rows("neighbor_table", table[:, 0], validate)
    return table


def lantern_relaxed_mass(
    p: torch.Tensor,
    x: torch.Tensor,
    neighbors: torch.Tensor,
    *,
    delta: Optional[float] = None,
    lam: Optional[float] = None,
    backend: str = "auto",
    validate: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Aggregate the probability of each candidate's latent neighbours within a TV budget (LANTERN,
    arXiv 2410.03355) or a ratio budget (LANTERN++, arXiv 2502.06352).

    Semantics: with ``n_1 .. n_k = neighbors[x]`` and ``c_m = p(n_1) + ... + p(n_m)`` (table order, float64),
    ``merged`` is the largest m with ``c_m <= budget`` (budget = ``delta``, or ``(lam - 1) * p(x)``) and
    ``p_tilde = p(x) + c_merged``. Moving that mass onto x changes p by exactly ``c_merged`` in total variation.

    Parameters
    ----------
    p : ``(rows, vocab_size)`` float32/float16/bfloat16; x : ``(rows,)`` int64 candidates;
    neighbors : ``(vocab_size, k)`` int32 (:func:`neighbor_table`);
    delta : float in [0, 1] or lam : float >= 1, inf included (exactly one). With ``lam = inf`` and
        ``p(x) = 0`` the budget ``(lam - 1) * p(x)`` is NaN: nothing merges and ``p_tilde = 0``.
    backend : {"auto", "reference", "cpu", "triton", "cuda"}
    validate : None (default), True or False
        Every backend, whatever ``validate`` says, reads only in-range entries: a row whose ``x`` is outside
        [0, V) returns ``p_tilde = NaN, merged = -2``; a row whose table row (of x) holds an id outside [0, V)
        or x itself returns ``p_tilde = NaN, merged = -4``; a row where p(x) or p of a neighbour the scan reads
        (n_1 .. n_{min(m* + 1, k)}: the merged prefix and the entry that ended it) is NaN, inf or negative
        returns ``p_tilde = NaN, merged = -6``. ``None``: shape checks, then a ValueError naming ``x``,
        ``neighbors`` or ``p`` and the row for such a row (one check over the R outputs; CUDA / compile: a
        device assertion). ``True`` adds, before the kernel, NaN / negative checks of the whole ``p``, every
        ``x`` and the whole table (one host synchronisation). ``False``: only the outputs report.

    Returns
    -------
    p_tilde : ``(rows,)`` float32; merged : ``(rows,)`` int32 in [0, k] (negative: a bad row, above).

    Raises
    ------
    ValueError
        Shapes, dtypes, devices, not exactly one of delta / lam; bad rows (see ``validate``); with
        ``validate=True`` NaN/negative p, ids out of range, self entries anywhere in the table.

    Examples
    --------
    >>> p = torch.tensor([[0.5, 0.3, 0.2]])
    >>> nb = torch.tensor([[1, 2], [0, 2], [1, 0]], dtype=torch.int32)
    >>> lantern_relaxed_mass(p, torch.tensor([0]), nb, delta=0.4)
    (tensor([0.8000]), tensor([1], dtype=torch.int32))
    """
    validate = v.validate_level(validate)
    v._tensor(p, "p", 2, v._PROB_DTYPES)
    v._tensor(x, "x", 1, (torch.int64,), p.device)
    v._shape(x, "x", (p.shape[0],))
    v.neighbor_shapes(neighbors, p.shape[1], p.device)
    v.lantern_budget(delta, lam)
    if validate:
        checks = v.new_checks()
        checks.probabilities(p, "p")
        checks.ids(x, "x", p.shape[1])
        v.check_neighbor_values(checks, neighbors, p.shape[1])
        checks.run()
    delta = None if delta is None else float(delta)
    lam = None if lam is None else float(lam)
    p_tilde, merged = run(
        "lantern_relaxed_mass",
        backend,
        p.device,
        lambda: reference.lantern_relaxed_mass(p, x, neighbors, delta=delta, lam=lam),
        (p, x, neighbors, delta, lam),
    )
    if validate is not False:
        v.raise_on_bad_rows("lantern_relaxed_mass", merged, validate)
    return p_tilde, merged
