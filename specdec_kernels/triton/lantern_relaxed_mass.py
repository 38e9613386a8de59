"""Triton LANTERN / LANTERN++ relaxed mass.

Grid: one program per row r. Pointers: p [R, V] (fp32/fp16/bf16), x [R] int64, neighbors [V, K] int32,
p_tilde [R] f32 and merged [R] int32 (written). The program walks x's neighbour row in chunks of BLOCK_K with a
float64 prefix sum (carry folded into each chunk) and stops at the first chunk where the prefix exceeds the budget
(delta, or (lam - 1) * p(x); passed as float64 bits). Row codes: an x outside [0, V) (2) or a table row of x with
an id outside [0, V) or x itself (4) reads nothing more; a NaN / inf / negative p(x) or p of a neighbour the scan
read (n_1 .. n_{min(m* + 1, K)}; 6) is reported; each writes p_tilde = NaN, merged = -code.
"""

import torch
import triton
import triton.language as tl

from . import _common as c


@triton.jit(do_not_specialize=["K", "budget_bits"])
def _lantern_relaxed_mass_kernel(p_ptr, x_ptr, nbr_ptr, p_tilde_ptr, merged_ptr, V, K, budget_bits,
                                 USE_LAMBDA: tl.constexpr, BLOCK_K: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    p_row = p_ptr + r * V
    x = tl.load(x_ptr + r)
    status = tl.where((x < 0) | (x >= V), c.ROW_BAD_ID, 0)
    x = tl.where(status == 0, x, 0)
    if status == 0:
        status = tl.where(c.neighbor_row_bad(nbr_ptr, x, K, V, BLOCK_K), c.ROW_BAD_NEIGHBOR, 0)
    px32 = tl.load(p_row + x).to(tl.float32)
    px = px32.to(tl.float64)
    budget = budget_bits.to(tl.int64).to(tl.float64, bitcast=True)
    p_tilde, merged, _ = c.relaxed_mass(p_row, p_tilde_ptr, 1.0, 1, nbr_ptr + x * K, tl.where(status == 0, K, 0), px,
                                        budget, USE_LAMBDA, False, BLOCK_K)
    if status == 0:
        read = tl.minimum(merged + 1, K)  # the merged prefix and the entry that ended it
        bad = c.bad_value(px32) | c.neighbors_read_bad(p_row, nbr_ptr + x * K, read, BLOCK_K)
        status = tl.where(bad, c.ROW_BAD_PROB, 0)
    nan = tl.full((), float("nan"), tl.float32)
    tl.store(p_tilde_ptr + r, tl.where(status == 0, p_tilde.to(tl.float32), nan))
    tl.store(merged_ptr + r, tl.where(status == 0, merged, -status))


def lantern_relaxed_mass_triton(p, x, neighbors, delta, lam):
    """Launcher with the ``lantern_relaxed_mass`` op schema; returns ``(p_tilde [R] f32, merged [R] int32)``."""
    p = p.contiguous()
    rows, vocab = p.shape
    p_tilde = torch.empty(rows, dtype=torch.float32, device=p.device)
    merged = torch.empty(rows, dtype=torch.int32, device=p.device)
    if rows == 0:
        return p_tilde, merged
    nbr = neighbors.contiguous()
    k = nbr.shape[1]
    use_lambda = lam is not None
    block_k = c.neighbor_block(k)
    with c.on_device(p):
        _lantern_relaxed_mass_kernel[(rows,)](
            p, x.contiguous(), nbr, p_tilde, merged, vocab, k, c.f64_bits(lam if use_lambda else delta),
            USE_LAMBDA=use_lambda, BLOCK_K=block_k, **c.launch_options(block_k),
        )
    return p_tilde, merged
