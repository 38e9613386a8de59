"""Triton Jacobi step (``jacobi_step`` schema): the chain walk of ``verify_chain.py`` over the raw logits, then the
Jacobi refresh of the window from the same processed rows, in the same program (docs/ALGORITHMS.md §3.12,
``specdec_kernels.reference.jacobi_step``).

Per row b, after the walk accepted a of n drafts (``status`` 0, ``update[b]``): new entry j < n - a is drawn from the
processed target row a + 1 + j, which is processed straight into its output row ``new_q[b, j]`` (the entry's q) and
sampled there by inverse CDF with ``u_draft[b, j]``. Coupled refresh (``HAS_KEEP``, MC-SJD): when the position
a + 1 + j < n held a used draft x, the entry keeps x if ``u_keep * q_old(x) < q_new(x)`` (float64), else is drawn
from max(0, q_new - q_old) (q_old one-hot at x without q; q_new itself if that has no mass). Entries j >= n - a are
fresh: ``min(floor(float32(u_init) * V), V - 1)`` with a one-hot q row (``HAS_INIT``), else -1 with an all-zero row.
A row that was not verified, has ``update`` False, or whose refresh read a value that is not a probability (a
processed row that is not a distribution, ``q_old(x)`` or, when x is not kept, the row ``q_old``: code 6) keeps its
window and q (one-hot rows of the window without q; an id outside [0, V) gives an all-zero row) with
``first_init = L``. Rows not verified keep their own code (the refresh is never run for them).
"""

import torch
import triton
import triton.language as tl

from . import _common as c
from . import _rows as rows


@triton.jit
def one_hot_row(row, token, V, BLOCK_V: tl.constexpr):
    """Writes the float32 one-hot row of ``token`` at ``row`` [V] (all zero for a token outside [0, V))."""
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        tl.store(row + offs, tl.where(offs == token, 1.0, 0.0).to(tl.float32), mask=offs < V)


@triton.jit
def refresh_window(p_ptr, q_ptr, window_ptr, u_draft_ptr, u_keep_ptr, u_init_ptr, update_ptr, new_window_ptr,
                   new_q_ptr, first_init_ptr, b, a, n, status, L, V, p_uncond_rows, top_k, scale_bits,
                   temperature_bits, top_p_bits, HAS_Q: tl.constexpr, P_CFG: tl.constexpr, TOP_K: tl.constexpr,
                   TOP_P: tl.constexpr, HAS_KEEP: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK_V: tl.constexpr):
    """The refresh of row b (see the module docstring) after the walk; writes new_window[b], new_q[b] and
    first_init[b] and returns the row's status (ROW_BAD_PROB when the refresh read a bad value)."""
    update = tl.load(update_ptr + b) != 0
    refreshed = n - a
    run = (status == 0) & update
    bad = tl.zeros((), tl.int1)
    if run:
        for j in range(refreshed):
            src = a + 1 + j
            q_new, bad_row = rows.load_row(p_ptr, b * (L + 1) + src, p_uncond_rows, new_q_ptr + (b * L + j) * V,
                                           True, V, top_k, scale_bits, temperature_bits, top_p_bits, True, P_CFG,
                                           TOP_K, TOP_P, BLOCK_V)
            bad = bad | bad_row
            token = tl.full((), -1, tl.int64)
            mode = tl.zeros((), tl.int32)  # 0: q_new; 1: max(0, q_new - q_old)
            x = tl.zeros((), tl.int64)
            q_old = q_ptr + (b * L + src) * V  # read only for a coupled entry with q
            if HAS_KEEP:
                # Only a used (so checked) old draft is coupled; the bonus position is drawn plainly.
                coupled = src < n
                x = tl.load(window_ptr + b * L + src, mask=coupled, other=0)
                if HAS_Q:
                    qx_old32 = tl.load(q_old + x, mask=coupled, other=1.0).to(tl.float32)
                else:
                    qx_old32 = tl.full((), 1.0, tl.float32)
                qx_new = tl.load(q_new + x, mask=coupled, other=0.0).to(tl.float64)
                u_keep = tl.load(u_keep_ptr + b * L + j, mask=coupled, other=0.0).to(tl.float64)
                keep = coupled & (u_keep * qx_old32.to(tl.float64) < qx_new)
                redraw = coupled & (keep == 0)
                bad = bad | (coupled & c.bad_value(qx_old32))
                if HAS_Q:
                    bad = bad | c.row_has_bad(q_old, redraw, V, BLOCK_V)
                token = tl.where(keep, x, token)
                mode = redraw.to(tl.int32)
            if token < 0:
                u_draft = tl.load(u_draft_ptr + b * L + j).to(tl.float64)
                total, last = c.weights_total(q_new, q_old, q_new, 1.0, x, mode, V, HAS_Q, False, BLOCK_V)
                if last < 0:  # the coupled residual has no mass: q_new itself
                    mode = tl.zeros((), tl.int32)
                    total, last = c.weights_total(q_new, q_old, q_new, 1.0, x, mode, V, HAS_Q, False, BLOCK_V)
                token = c.weights_search(q_new, q_old, q_new, 1.0, x, mode, u_draft * total, last, V, HAS_Q, False,
                                         BLOCK_V)
                bad = bad | (last < 0)
            tl.store(new_window_ptr + b * L + j, token)
        for j in range(tl.maximum(refreshed, 0), L):
            if HAS_INIT:  # uniform over the vocabulary, in float32 as the decoding loop draws it
                scaled = tl.load(u_init_ptr + b * L + j) * (V * 1.0)  # float32 (V < 2^24)
                token = tl.maximum(tl.minimum(scaled.to(tl.int64), V - 1), 0)
            else:  # left to the caller
                token = tl.full((), -1, tl.int64)
            tl.store(new_window_ptr + b * L + j, token)
            one_hot_row(new_q_ptr + (b * L + j) * V, token, V, BLOCK_V)
    status = tl.where(run & bad, c.ROW_BAD_PROB, status)
    kept = (status != 0) | (update == 0)
    if kept:  # the row keeps its window and q
        tl.debug_barrier()  # a refresh that wrote part of the row first has finished
        for j in range(L):
            token = tl.load(window_ptr + b * L + j)
            tl.store(new_window_ptr + b * L + j, token)
            out = new_q_ptr + (b * L + j) * V
            if HAS_Q:
                for v0 in range(0, V, BLOCK_V):
                    offs = v0 + tl.arange(0, BLOCK_V)
                    m = offs < V
                    tl.store(out + offs, tl.load(q_ptr + (b * L + j) * V + offs, mask=m, other=0.0), mask=m)
            else:
                one_hot_row(out, token, V, BLOCK_V)
    tl.store(first_init_ptr + b, tl.where(kept, L, refreshed))
    return status


class Refresh:
    """The Jacobi outputs and uniforms of one launch, as the chain kernel's refresh arguments."""

    def __init__(self, u_draft, u_keep, u_init, update, new_window, new_q, first_init):
        device = new_window.device
        dummy = torch.empty(1, dtype=torch.float32, device=device)
        self.u_draft = c.nonempty(u_draft.contiguous())
        self.u_keep = c.nonempty(u_keep.contiguous()) if u_keep is not None else dummy
        self.u_init = c.nonempty(u_init.contiguous()) if u_init is not None else dummy
        self.update = update.contiguous().to(torch.int8)
        self.new_window = c.nonempty(new_window)
        self.new_q = c.nonempty(new_q)
        self.first_init = first_init
        self.has_keep = u_keep is not None
        self.has_init = u_init is not None

    def pointers(self):
        return [self.u_draft, self.u_keep, self.u_init, self.update, self.new_window, self.new_q, self.first_init]

    def flags(self):
        return {"REFRESH": True, "HAS_KEEP": self.has_keep, "HAS_INIT": self.has_init}


def jacobi_step_triton(logits, window, q, u_accept, u_sample, u_draft, u_keep, u_init, num_drafts, update, cfg_scale,
                       temperature, top_k, top_p, method, neighbors, embeddings, params):
    """Launcher with the ``jacobi_step`` op schema; returns ``(accept_len, next_token, window, q, first_init)``."""
    from .verify_chain import check_chain_method, launch_chain  # (verify_chain imports this module's refresh)

    check_chain_method("jacobi_step", method)
    batch, width = window.shape
    vocab = logits.shape[-1]
    device = logits.device
    new_window = torch.empty(batch, width, dtype=torch.int64, device=device)
    new_q = torch.empty(batch, width, vocab, dtype=torch.float32, device=device)
    first_init = torch.empty(batch, dtype=torch.int64, device=device)
    q_source = None if q is None else rows.Source(q.float())
    refresh = Refresh(u_draft, u_keep, u_init, update, new_window, new_q, first_init)
    accept_len, next_token = launch_chain(
        rows.Source(logits, logits=True, cfg=cfg_scale is not None), q_source, window, u_accept, u_sample,
        num_drafts, method, neighbors, embeddings, params,
        processing=rows.Processing(cfg_scale, temperature, top_k, top_p, vocab), refresh=refresh)
    if batch == 0:
        first_init.zero_()
    return accept_len, next_token, new_window, new_q, first_init
