"""Triton GSD group masses (P_G, Q_G).

Grid: one program per row r. Pointers: p [R, V] (fp32/fp16/bf16), q [R, V] or a dummy (HAS_Q), x [R] int64,
embeddings [V, D_EMB] f32 or a dummy (HAS_EMB), group_p / group_q [R] f32 (written). Rank order is p descending,
ties to the lower id, through a packed int64 key; window step i finds the next member above and below x in one
chunked pass over the row (O(max(h_lo, h_hi) * V) per row); members are filtered in float32 and summed in float64.
A bad row writes group_p = -code, group_q = NaN: an x outside [0, V) (2) reads nothing at x; a NaN / inf / negative
entry of the ranked row p or of q at a member, or a NaN / inf embedding row whose distance is computed (6).
The window is capped at V - 1 by the launcher.
"""

import torch
import triton
import triton.language as tl

from . import _common as c


@triton.jit(do_not_specialize=["D_EMB", "h_lo", "h_hi"])
def _gsd_group_mass_kernel(p_ptr, q_ptr, x_ptr, emb_ptr, group_p_ptr, group_q_ptr, V, D_EMB, h_lo, h_hi, p_thr,
                           d_thr, HAS_Q: tl.constexpr, HAS_EMB: tl.constexpr, BLOCK_V: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    x = tl.load(x_ptr + r)
    ok = (x >= 0) & (x < V)
    x = tl.where(ok, x, 0)
    group_p, group_q, bad = c.gsd_group_mass_checked(p_ptr + r * V, q_ptr + r * V, x, V, emb_ptr, D_EMB,
                                                     tl.where(ok, h_lo, 0), tl.where(ok, h_hi, 0), p_thr, d_thr, HAS_Q,
                                                     HAS_EMB, BLOCK_V)
    bad = bad | c.row_has_bad(p_ptr + r * V, ok, V, BLOCK_V)  # GSD ranks the whole row
    code = tl.where(ok, tl.where(bad, c.ROW_BAD_PROB, 0), c.ROW_BAD_ID)
    nan = tl.full((), float("nan"), tl.float32)
    tl.store(group_p_ptr + r, tl.where(code == 0, group_p.to(tl.float32), -code.to(tl.float32)))
    tl.store(group_q_ptr + r, tl.where(code == 0, group_q.to(tl.float32), nan))


def gsd_group_mass_triton(p, q, x, embeddings, h_lo, h_hi, p_thr, d_thr):
    """Launcher with the ``gsd_group_mass`` op schema; returns ``(group_p [R] f32, group_q [R] f32)``."""
    p = p.contiguous()
    rows, vocab = p.shape
    group_p = torch.empty(rows, dtype=torch.float32, device=p.device)
    group_q = torch.empty(rows, dtype=torch.float32, device=p.device)
    if rows == 0:
        return group_p, group_q
    has_q, has_emb = q is not None, embeddings is not None
    emb = embeddings.contiguous() if has_emb else p
    block_v = c.vocab_block(vocab)
    h_lo, h_hi = c.gsd_window(h_lo, h_hi, vocab)
    with c.on_device(p):
        _gsd_group_mass_kernel[(rows,)](
            p, q.contiguous() if has_q else p, x.contiguous(), emb, group_p, group_q, vocab,
            emb.shape[1] if has_emb else 1, h_lo, h_hi, c.to_f32(p_thr), c.to_f32(d_thr), HAS_Q=has_q,
            HAS_EMB=has_emb, BLOCK_V=block_v, **c.launch_options(block_v),
        )
    return group_p, group_q
