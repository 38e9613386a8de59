"""Reference: one Jacobi decoding step from raw logits — chain verification of the window, then the Jacobi refresh
of the drafts after the accepted prefix (docs/ALGORITHMS.md §3.12).

Defined as :func:`process_logits` followed by :func:`verify_chain`, then, per row b with ``a = accept_len[b]``,
``n = num_drafts[b]`` and ``L`` window entries:

* entries ``j < n - a`` (refreshed): drawn from the processed target row ``a + 1 + j`` (the Jacobi fixed-point
  update), by inverse CDF with ``u_draft[b, j]``; that row becomes the entry's q. With ``u_keep`` (coupled refresh,
  MC-SJD, arXiv 2510.24211) the entry instead keeps the old draft ``x`` at its position ``a + 1 + j`` when
  ``u_keep[b, j] * q_old(x) < q_new(x)`` (``q_old`` = ``q[b, a + 1 + j]``, one-hot when ``q`` is None), else draws
  from ``max(0, q_new - q_old)`` (``q_new`` itself if that has no mass) with ``u_draft[b, j]``: a maximal coupling,
  whose marginal is ``q_new`` whatever ``q_old`` was. The position ``a + 1 + j = L`` (the bonus row) has no old
  draft and is drawn plainly; so is a position ``>= n`` (an unused, unchecked window entry). The refresh reads
  ``q_old(x)`` and, when ``x`` is not kept, the whole row ``q_old``: a NaN, inf or negative value there makes the row
  a bad row (code 6), like a value verification reads; so does a target row a + 1 .. n that is not a
  distribution (NaN / +inf logits, or all -inf after processing).
* entries ``j >= n - a`` (fresh): ``min(floor(float32(u_init[b, j]) * V), V - 1)`` in float32 with a one-hot q; with
  ``u_init`` None they are ``-1`` with an all-zero q row, for the caller to fill (and to set the one).
* ``first_init[b] = n - a``. Rows with ``update[b]`` False, or not verified (``next_token < 0``), keep their window
  and q (one-hot rows of the window when ``q`` is None) and get ``first_init[b] = L``.
"""

from typing import Optional, Tuple

import torch

from ._sampling import inverse_cdf
from ._status import ROW_BAD_PROB, bad_prob
from .verify_chain import verify_chain
from .verify_logits import process_logits


def _one_hot(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """float32 one-hot rows; a negative token gives an all-zero row."""
    rows = torch.zeros(*tokens.shape, vocab, dtype=torch.float32, device=tokens.device)
    return rows.scatter_(-1, tokens.clamp_min(0)[..., None], (tokens >= 0).to(torch.float32)[..., None])


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
    **method_kwargs,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``accept_len (B,)``, ``next_token (B,)``, ``new_window (B, L)`` int64, ``new_q (B, L, V)`` float32 and
    ``first_init (B,)`` int64 (see the module docstring); ``method_kwargs`` as :func:`verify_chain`."""
    batch, width = window.shape
    device = window.device
    p = process_logits(logits, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
    vocab = p.shape[-1]
    if num_drafts is None:
        num_drafts = torch.full((batch,), width, dtype=torch.int64, device=device)
    accept_len, next_token = verify_chain(p, q, window, u_accept, u_sample, num_drafts=num_drafts, **method_kwargs)
    q_old = _one_hot(window, vocab) if q is None else q.to(torch.float32)
    if width == 0:
        empty = torch.zeros(batch, dtype=torch.int64, device=device)
        return accept_len, next_token, window.clone(), q_old.clone(), empty

    j = torch.arange(width, device=device)
    refreshed = j[None, :] < (num_drafts - accept_len)[:, None]
    src = (accept_len[:, None] + 1 + j[None, :]).clamp(0, width)  # target row of entry j
    rows = p.gather(1, src[:, :, None].expand(-1, -1, vocab))  # q_new per entry
    drawn = inverse_cdf(rows.reshape(-1, vocab), u_draft.reshape(-1)).view(batch, width)
    # A target row the refresh reads (a + 1 .. n) that is not a distribution is code 6, as for verification's rows.
    row_bad = ~(torch.isfinite(rows).all(-1) & (rows.sum(-1) > 0))
    bad_refresh = (refreshed & row_bad).any(-1)
    if u_keep is not None:
        old_pos = src.clamp_max(width - 1)
        has_old = refreshed & (src < num_drafts[:, None])  # the old draft there was used, so checked
        x_old = window.gather(1, old_pos)
        q_prev = q_old.gather(1, old_pos[:, :, None].expand(-1, -1, vocab)).to(torch.float64)
        new64 = rows.to(torch.float64)
        qx_old = q_prev.gather(2, x_old.clamp(0, vocab - 1)[:, :, None])[..., 0]
        qx_new = new64.gather(2, x_old.clamp(0, vocab - 1)[:, :, None])[..., 0]
        keep = u_keep.to(torch.float64) * qx_old < qx_new
        residual = (new64 - q_prev).clamp_min(0.0)
        has_mass = residual.sum(-1) > 0
        redrawn = inverse_cdf(residual.reshape(-1, vocab), u_draft.reshape(-1)).view(batch, width)
        coupled = torch.where(keep, x_old, torch.where(has_mass, redrawn, drawn))
        drawn = torch.where(has_old, coupled, drawn)
        read_bad = bad_prob(qx_old) | (~keep & bad_prob(q_prev).any(-1))
        bad_refresh = bad_refresh | (has_old & read_bad).any(-1)
    if u_init is not None:
        scaled = u_init.to(torch.float32) * torch.tensor(float(vocab), dtype=torch.float32)
        init = scaled.to(torch.int64).clamp(0, vocab - 1)
    else:
        init = torch.full_like(window, -1)
    new_window = torch.where(refreshed, drawn, init)
    new_q = torch.where(refreshed[:, :, None], rows, _one_hot(init, vocab))
    first_init = (num_drafts - accept_len).clamp_min(0)

    verified = next_token >= 0  # the kernels refresh (and so read q_old) only in verified rows they update
    if update is not None:
        verified = verified & update.to(torch.bool)
    bad_refresh = bad_refresh & verified
    accept_len = torch.where(bad_refresh, 0, accept_len)
    next_token = torch.where(bad_refresh, -ROW_BAD_PROB, next_token)
    keep_row = next_token < 0
    if update is not None:
        keep_row = keep_row | ~update.to(torch.bool)
    new_window = torch.where(keep_row[:, None], window, new_window)
    new_q = torch.where(keep_row[:, None, None], q_old, new_q)
    first_init = torch.where(keep_row, width, first_init)
    return accept_len, next_token, new_window, new_q, first_init
