"""Public op: chain verification (standard speculative sampling, GSD, LANTERN)."""

from typing import Optional, Tuple

import torch

from .. import _validation as v
from .. import reference
from .._constants import CHAIN_METHODS, METHOD_CODES
from ._dispatch import run

GSD_DEFAULTS = {"rank_window": (7, 6), "p_thr": 0.15, "d_thr": 0.5}


def _packed_params(method, delta, lam, h_lo, h_hi, p_thr, d_thr):
    """The schema's ``float[] params`` (layout in csrc/methods.h): exact ``[]``; gsd ``[h_lo, h_hi, p_thr,
    d_thr]``; lantern ``[use_lambda, budget]``."""
    if method == "gsd":
        return [float(h_lo), float(h_hi), float(p_thr), float(d_thr)]
    if method == "lantern":
        return [1.0, float(lam)] if lam is not None else [0.0, float(delta)]
    return []


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
    backend: str = "auto",
    validate: bool = True,
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
    u_accept : ``(batch_size, num_draft_tokens)`` float32 in [0, 1)
        One uniform per draft, used only by that draft's test.
    u_sample : ``(batch_size,)`` float32 in [0, 1)
        One uniform per row for the recovered or bonus sample.
    num_drafts : ``(batch_size,)`` int64 in [0, num_draft_tokens], optional
        Drafts per row (ragged rows; 0 makes a plain AR sample from ``p[b, 0]``). Default: all.
    method : {"exact", "gsd", "lantern"}
    neighbors : ``(vocab_size, k)`` int32, for "lantern"
        The neighbour table (:func:`neighbor_table`).
    delta, lam : float, for "lantern"
        Exactly one: TV budget ``delta`` in [0, 1] (LANTERN) or ratio ``lam`` >= 1 (LANTERN++).
    embeddings : ``(vocab_size, dim)`` float32, optional, for "gsd"
        Embedding table of GSD's distance filter (pass the L2-normalised VQ codebook); None disables it.
    rank_window, p_thr, d_thr : for "gsd"
        Window ``(h_lo, h_hi)`` (default ``(7, 6)``) and filter thresholds (defaults 0.15 and 0.5).
    backend : {"auto", "reference", "cpu", "triton", "cuda"}
    validate : bool
        Run the value checks (NaN/inf, ranges; one host synchronisation). Shape checks always run.

    Returns
    -------
    accept_len : ``(batch_size,)`` int64, in [0, num_drafts[b]]
    next_token : ``(batch_size,)`` int64, the recovered or bonus token

    Randomness
    ----------
    Only ``u_accept`` and ``u_sample``; no generator is read, so the op is deterministic and, with
    ``validate=False``, capturable in a CUDA graph (refill the uniforms before each replay).

    Raises
    ------
    ValueError
        Wrong shapes, dtypes or devices; NaN/inf or negative probabilities; draft ids outside the vocabulary;
        uniforms outside [0, 1); ``num_drafts`` outside [0, L]; unknown method or parameters it would ignore;
        neighbour table or embeddings that do not match the vocabulary.

    Examples
    --------
    >>> p = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])   # one draft, vocab 2
    >>> verify_chain(p, None, torch.tensor([[1]]), torch.tensor([[0.5]]), torch.tensor([0.3]))
    (tensor([1]), tensor([0]))
    """
    if num_drafts is None:
        num_drafts = torch.full((p.shape[0],), p.shape[1] - 1, dtype=torch.int64, device=p.device)
    gsd_given = any(value is not None for value in (rank_window, p_thr, d_thr))
    v.method_params(
        method, CHAIN_METHODS, neighbors=neighbors, delta=delta, lam=lam, embeddings=embeddings, gsd_given=gsd_given
    )
    rank_window = GSD_DEFAULTS["rank_window"] if rank_window is None else rank_window
    p_thr = GSD_DEFAULTS["p_thr"] if p_thr is None else p_thr
    d_thr = GSD_DEFAULTS["d_thr"] if d_thr is None else d_thr
    h_lo, h_hi = v.gsd_params(rank_window, p_thr, d_thr)
    _, _, vocab = v.chain_shapes(p, q, draft, u_accept, u_sample, num_drafts)
    if neighbors is not None:
        v.neighbor_shapes(neighbors, vocab, p.device)
    if embeddings is not None:
        v.embedding_shapes(embeddings, vocab, p.device)
    if validate:
        v.check_chain_values(p, q, draft, u_accept, u_sample, num_drafts, neighbors, embeddings)
    delta = None if delta is None else float(delta)
    lam = None if lam is None else float(lam)
    return run(
        "verify_chain",
        backend,
        p.device,
        lambda: reference.verify_chain(
            p, q, draft, u_accept, u_sample, num_drafts=num_drafts, method=method, neighbors=neighbors, delta=delta,
            lam=lam, embeddings=embeddings, rank_window=(h_lo, h_hi), p_thr=float(p_thr), d_thr=float(d_thr),
        ),
        (p, q, draft, u_accept, u_sample, num_drafts, METHOD_CODES[method], neighbors, embeddings,
         _packed_params(method, delta, lam, h_lo, h_hi, p_thr, d_thr)),
    )
