"""Public op: one Jacobi decoding step from raw logits (verification and the Jacobi refresh in one pass)."""

from typing import NamedTuple, Optional, Tuple

import torch

from .. import _validation as v
from .. import reference
from ._dispatch import run
from .verify_logits import prepare_chain_logits


class JacobiStep(NamedTuple):
    """Outcome of :func:`jacobi_step`.

    accept_len, next_token : ``(B,)`` int64, as :func:`verify_chain_logits`.
    window : ``(B, L)`` int64, the next step's drafts: refreshed entries ``j < first_init[b]``, then fresh inits
        (``-1`` where ``u_init`` was None: the caller fills them).
    q : ``(B, L, V)`` float32, the distribution each new draft was drawn from (one-hot rows for inits; all-zero rows
        for the ``-1`` entries, where the caller sets the one).
    first_init : ``(B,)`` int64, the first fresh entry of each row (``L``: the row kept its window).
    """

    accept_len: torch.Tensor
    next_token: torch.Tensor
    window: torch.Tensor
    q: torch.Tensor
    first_init: torch.Tensor


def jacobi_step(
    logits: torch.Tensor,
    window: torch.Tensor,
    q: Optional[torch.Tensor],
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
    u_draft: torch.Tensor,
    *,
    u_keep: Optional[torch.Tensor] = None,
    u_init: Optional[torch.Tensor] = None,
    num_drafts: Optional[torch.Tensor] = None,
    update: Optional[torch.Tensor] = None,
    cfg_scale: Optional[float] = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
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
) -> JacobiStep:
    """One step of Jacobi decoding (SJD, GSD, relaxed or coupled variants) straight from the target's raw logits.

    Verifies the window like :func:`verify_chain_logits` (``draft_probs = q``), then draws the next window from the
    *same* processed rows, in the same pass per row: entry ``j < n - a`` from the processed target row ``a + 1 + j``
    (the Jacobi fixed-point update; that row becomes its q), entries ``j >= n - a`` as fresh inits with one-hot q.
    Each logits row is processed once; no ``(B, L + 1, V)`` probability tensor is formed. Equal, token for token on
    the same uniforms, to ``process_logits`` + ``verify_chain`` + the refresh of
    :func:`specdec_kernels.reference.jacobi_step` (docs/ALGORITHMS.md §3.12).

    Parameters
    ----------
    logits : ``(2B or B, L + 1, V)`` raw target logits over ``[last, window]`` (cond rows first with ``cfg_scale``).
    window : ``(B, L)`` int64, this step's drafts. q : ``(B, L, V)`` float32 distributions they were drawn from, or
        None (all one-hot).
    u_accept ``(B, L)``, u_sample ``(B,)`` : verification uniforms, as :func:`verify_chain_logits`.
    u_draft : ``(B, L)`` float32, the inverse-CDF uniform of each refreshed entry.
    u_keep : ``(B, L)`` float32, optional. Coupled refresh (MC-SJD, arXiv 2510.24211): entry j keeps the old draft
        ``x`` at its position when ``u_keep * q_old(x) < q_new(x)``, else draws from ``max(0, q_new - q_old)`` with
        ``u_draft``; the marginal stays ``q_new`` (exact), and unchanged drafts keep being accepted.
    u_init : ``(B, L)`` float32, optional: fresh entries become ``min(floor(u_init * V), V - 1)`` (float32
        arithmetic); None leaves them ``-1`` with an all-zero q row for the caller (e.g. a spatial init).
    num_drafts : ``(B,)`` int64 in [0, L] (default L). update : ``(B,)`` bool, rows to refresh (default all); the
        others keep window and q.
    cfg_scale, temperature, top_k, top_p : processing, as :func:`process_logits`.
    method, neighbors, delta, lam, embeddings, rank_window, p_thr, d_thr, epsilon, alpha : the acceptance rule, as
        :func:`verify_chain`.
    backend, validate : as :func:`verify_chain_logits` (uniforms of 1.0 or NaN in ``u_draft`` / ``u_keep`` /
        ``u_init`` are refused with ``validate=True``).

    Returns
    -------
    JacobiStep ``(accept_len, next_token, window, q, first_init)``; rows not verified come back with
    ``next_token = -code`` (as :func:`verify_chain_logits`; code 6 also for a NaN / inf / negative ``q`` value the
    coupled refresh reads) and keep their window.

    Examples
    --------
    >>> logits = torch.tensor([[[0.0, 9.0], [9.0, 0.0], [0.0, 9.0]]])   # B = 1, window of 2, V = 2
    >>> out = jacobi_step(logits, torch.tensor([[1, 1]]), None, torch.tensor([[0.5, 0.5]]), torch.tensor([0.5]),
    ...                   torch.tensor([[0.5, 0.5]]), u_init=torch.tensor([[0.9, 0.9]]))
    >>> out.accept_len, out.next_token, out.window, out.first_init   # draft 1 rejected (p = e^-9): token 0
    (tensor([1]), tensor([0]), tensor([[1, 1]]), tensor([1]))
    """
    def extra(checks):
        for name, u in (("u_draft", u_draft), ("u_keep", u_keep), ("u_init", u_init)):
            if u is not None:
                checks.uniforms(u, name)

    call = prepare_chain_logits(logits, window, u_accept, u_sample, num_drafts, q, None, cfg_scale, temperature,
                                top_k, top_p, method, backend, validate,
                                dict(neighbors=neighbors, delta=delta, lam=lam, embeddings=embeddings,
                                     rank_window=rank_window, p_thr=p_thr, d_thr=d_thr, epsilon=epsilon,
                                     alpha=alpha, **method_params), extra_checks=extra)
    device = call.logits.device
    batch, width = call.batch, call.drafts
    q = None if call.draft_probs is None else call.draft_probs.float()
    for name, u in (("u_draft", u_draft), ("u_keep", u_keep), ("u_init", u_init)):
        if u is not None or name == "u_draft":
            v._tensor(u, name, 2, (torch.float32,), device)
            v._shape(u, name, (batch, width))
    if update is None:
        update = torch.ones(batch, dtype=torch.bool, device=device)
    v._tensor(update, "update", 1, (torch.bool,), device)
    v._shape(update, "update", (batch,))
    args = (call.logits, window, q, call.u_accept, call.u_sample, u_draft, u_keep, u_init, call.num_drafts, update,
            call.cfg_scale, call.temperature, call.top_k, call.top_p, call.code, call.kwargs.get("neighbors"),
            call.kwargs.get("embeddings"), call.params)

    def reference_step():
        return reference.jacobi_step(call.logits, window, q, call.u_accept, call.u_sample, u_draft, u_keep=u_keep,
                               u_init=u_init, num_drafts=call.num_drafts, update=update, cfg_scale=call.cfg_scale,
                               temperature=call.temperature, top_k=call.top_k, top_p=call.top_p, **call.kwargs)

    out = JacobiStep(*run("jacobi_step", backend, device, reference_step, args))
    if validate is not False:
        v.raise_on_bad_rows("jacobi_step", out.next_token, validate)
    return out
