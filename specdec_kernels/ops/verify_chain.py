"""Public op: chain verification (standard speculative sampling, GSD, LANTERN)."""

from typing import Optional, Tuple

import torch

from .. import _methods
from .. import _validation as v
from .. import reference
from ._dispatch import run

#: GSD's defaults, from the method table (kept for callers that read them here).
GSD_DEFAULTS = {param.name: param.default for param in _methods.GSD.params}


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
    rank_window: Optional[Tuple[int, int]] = None,
    p_thr: Optional[float] = None,
    d_thr: Optional[float] = None,
    epsilon: Optional[float] = None,
    alpha: Optional[float] = None,
    backend: str = "auto",
    validate: Optional[bool] = None,
    **method_params,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Verify a ragged batch of draft chains in one call (speculative sampling, arXiv 2211.17192 / 2302.01318;
    GSD, arXiv 2508.07747; LANTERN, arXiv 2410.03355 and LANTERN++, arXiv 2502.06352).

    Semantics: in row ``b`` the drafts ``draft[b, :num_drafts[b]]`` are tested in order and *accepted* until
    the first failure at position ``a``; the *recovered* token is then sampled from the residual at ``a``.
    When every draft passes, the *bonus* token is sampled from ``p[b, num_drafts[b]]``. Each call emits
    ``accept_len + 1`` tokens per row. Tests (division-free, float64):

    - ``"exact"`` (standard speculative sampling; SJD uses it with its Jacobi drafts): ``u * q(x) < p(x)``.
      Lossless: the emitted tokens follow ``p``.
    - ``"gsd"``: ``u * Q_G < P_G`` over GSD's dynamic group (:func:`gsd_group_mass`); lossy.
    - ``"lantern"``: ``p~(x) > 0 and u * q(x) <= p~(x)`` with ``p~`` from :func:`lantern_relaxed_mass`; lossy,
      with a single deterministic candidate per position the output is p with the merged neighbours'
      mass moved onto x (TV <= delta, or <= lam * p pointwise).
    - ``"typical"`` (Medusa's typical acceptance, docs/ALGORITHMS.md §3.11): ``p(x) > min(epsilon, alpha *
      exp(-H(p[b, i])))``, deterministic (``u_accept`` and ``q`` take no part); on rejection the token is
      sampled from ``p[b, a]`` itself; lossy.

    The residual is ``max(0, p~_x - q)`` (``p~_x = p`` for exact and gsd; ``q`` one-hot at x when None); if it
    sums to zero, ``p[b, a]`` is used. Sampling is inverse-CDF on ``u_sample[b]``.

    Parameters
    ----------
    p : ``(batch_size, num_draft_tokens + 1, vocab_size)`` float32/float16/bfloat16
        Processed target probabilities; ``p[:, i]`` judges ``draft[:, i]``, ``p[:, L]`` is the bonus row. Read only.
    q : ``(batch_size, num_draft_tokens, vocab_size)`` same dtype as p, or None
        Draft distributions the drafts were drawn from; None means one-hot drafts (Jacobi inits, greedy drafts).
    draft : ``(batch_size, num_draft_tokens)`` int64
        Draft token ids; entries past ``num_drafts[b]`` are ignored.
    u_accept : ``(batch_size, num_draft_tokens)`` float32 in [0, 1] (docs/ALGORITHMS.md §3.1: 1.0 is valid)
        One uniform per draft, used only by that draft's test.
    u_sample : ``(batch_size,)`` float32 in [0, 1] (docs/ALGORITHMS.md §3.1: 1.0 is valid)
        One uniform per row for the recovered or bonus sample.
    num_drafts : ``(batch_size,)`` int64 in [0, num_draft_tokens], optional
        Drafts per row (ragged rows; 0 makes a plain AR sample from ``p[b, 0]``). Default: all.
    method : {"exact", "gsd", "lantern", "typical"}
    neighbors : ``(vocab_size, k)`` int32, for "lantern"
        The neighbour table (:func:`neighbor_table`).
    delta, lam : float, for "lantern"
        Exactly one: TV budget ``delta`` in [0, 1] (LANTERN) or ratio ``lam`` >= 1 (LANTERN++).
    embeddings : ``(vocab_size, dim)`` float32, optional, for "gsd"
        Embedding table of GSD's distance filter (pass the L2-normalised VQ codebook); None disables it.
    rank_window, p_thr, d_thr : for "gsd"
        Window ``(h_lo, h_hi)`` (default ``(7, 6)``; capped at ``vocab_size - 1``) and filter thresholds
        (defaults 0.15 and 0.5; any number >= 0, inf included).
    epsilon, alpha : float >= 0, for "typical"
        Hard threshold and entropy factor (defaults 0.09 and 0.3, Medusa's).
    backend : {"auto", "reference", "cpu", "triton", "cuda"}
    validate : None (default), True or False
        What is checked (docs/ALGORITHMS.md §3.8). Always: method and parameters, shapes, dtypes, devices, the
        table's and embeddings' shapes. Every backend, whatever ``validate`` says, range-checks each id it
        reads and reports a row whose inputs break a precondition instead of verifying it: ``accept_len[b] = 0``,
        ``next_token[b] = -code`` with code 1 ``num_drafts[b]`` outside [0, L], 2 a used draft id outside
        [0, V), 4 (lantern) a bad neighbour id (outside [0, V), or the draft itself) in a used draft's table row,
        5 a used uniform outside [0, 1] or NaN, 6 a NaN / inf / negative value among the entries read (the
        tested p(x), q(x); the whole row for GSD's ranking; the row sampled from, with q's row for a residual) or
        a sampled row without mass.

        - ``None``: the checks above, then a ValueError naming the argument and the first bad row if any row
          came back with a code (CPU: one check over the ``B`` outputs; CUDA and ``torch.compile``: an
          asynchronous device assertion, no host synchronisation, CUDA-graph capturable).
        - ``True``: additionally, before the kernel, the full value checks: NaN / inf / negative anywhere in
          p and q, every draft id, uniforms, all-zero rows that are read, the whole neighbour table and finite
          embeddings (one host synchronisation; under ``torch.compile`` one device assertion per condition).
        - ``False``: nothing raises on values; bad rows still come back as ``next_token = -code`` and no backend
          reads or writes out of bounds.

    Returns
    -------
    accept_len : ``(batch_size,)`` int64, in [0, num_drafts[b]]
    next_token : ``(batch_size,)`` int64, the recovered or bonus token

    Randomness
    ----------
    Only ``u_accept`` and ``u_sample``; no generator is read, so the op is deterministic and, with
    ``validate=None`` on CUDA or ``validate=False``, capturable in a CUDA graph (refill the uniforms before each
    replay).

    Raises
    ------
    ValueError
        Wrong shapes, dtypes or devices; unknown method or parameters it would ignore; neighbour table or
        embeddings that do not match the vocabulary; a bad row (see ``validate``); with ``validate=True`` also
        NaN/inf or negative probabilities anywhere, uniforms outside [0, 1] and a bad neighbour table.

    Examples
    --------
    >>> p = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])   # one draft, vocab 2
    >>> verify_chain(p, None, torch.tensor([[1]]), torch.tensor([[0.5]]), torch.tensor([0.3]))
    (tensor([1]), tensor([0]))
    """
    validate = v.validate_level(validate)
    if num_drafts is None:
        num_drafts = torch.full((p.shape[0],), p.shape[1] - 1, dtype=torch.int64, device=p.device)
    _, _, vocab = v.chain_shapes(p, q, draft, u_accept, u_sample, num_drafts)
    code, params = v.method_params(method, "verify_chain", vocab, neighbors=neighbors, embeddings=embeddings,
                                   delta=delta, lam=lam, rank_window=rank_window, p_thr=p_thr, d_thr=d_thr,
                                   epsilon=epsilon, alpha=alpha, **method_params)
    if neighbors is not None:
        v.neighbor_shapes(neighbors, vocab, p.device)
    if embeddings is not None:
        v.embedding_shapes(embeddings, vocab, p.device)
    if validate:
        v.check_chain_values(p, q, draft, u_accept, u_sample, num_drafts, neighbors, embeddings)
    accept_len, next_token = run(
        "verify_chain",
        backend,
        p.device,
        lambda: reference.verify_chain(
            p, q, draft, u_accept, u_sample, num_drafts=num_drafts, method=method, neighbors=neighbors,
            embeddings=embeddings, **_methods.unpack_params(_methods.METHODS[method], params),
        ),
        (p, q, draft, u_accept, u_sample, num_drafts, code, neighbors, embeddings, params),
    )
    if validate is not False:
        v.raise_on_bad_rows("verify_chain", next_token, validate)
    return accept_len, next_token
