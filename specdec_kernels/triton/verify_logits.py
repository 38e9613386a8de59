"""Triton logits -> verification (``verify_chain_logits`` / ``verify_tree_logits`` schemas).

Two stages per call, no host synchronisation:

1. ``_process_rows_kernel`` (one program per logits row): CFG, temperature, top-k, top-p and softmax with the
   numerics of ``reference.verify_logits`` (float64 after the float32 processed logit; the same branch-free
   float64 ``exp`` as ``csrc/verify_logits_math.h``); writes the float32 probability row and a flag for rows that
   are not a distribution. top-k is an exact bisection over the order-preserving int32 keys of the processed logits
   (the largest key with at least k entries at or above it); top-p a bisection over the float32 probabilities'
   bits (the smallest cut whose strictly-above mass is < top_p), both 32 counting passes over the row.
2. The Triton ``verify_chain`` / ``verify_tree`` kernels on those rows, with rows that break a structural
   precondition neutralised first and reported afterwards as ``next_token = -code`` (kernel contract §3).

The rows are materialised between the stages (``[B, L+1, V]`` float32); the CPU kernel fuses the two.
"""

import torch
import triton
import triton.language as tl

from . import _common as c
from .verify_chain import verify_chain_triton
from .verify_tree import verify_tree_triton

#: Clamp of the temperature (mirrors reference.verify_logits.MIN_TEMPERATURE).
MIN_TEMPERATURE = 1e-5

INT32_MIN: tl.constexpr = tl.constexpr(-2147483648)
INT32_MAX: tl.constexpr = tl.constexpr(2147483647)
POS_INF_BITS: tl.constexpr = tl.constexpr(0x7F800000)
EXP_SHIFT_BITS: tl.constexpr = tl.constexpr(c.f64_bits(6755399441055744.0))


@triton.jit
def exp_nonpositive(x):
    """float64 exp(x) for x <= 0, the steps of csrc/verify_logits_math.h (0 below -708)."""
    in_range = x >= -708.0
    xc = tl.where(in_range, x, -708.0)
    shifted = xc * 1.4426950408889634 + 6755399441055744.0
    kd = shifted - 6755399441055744.0
    r = (xc - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10
    poly = r * 0.0 + 1.0 / 6227020800.0
    poly = poly * r + 1.0 / 479001600.0
    poly = poly * r + 1.0 / 39916800.0
    poly = poly * r + 1.0 / 3628800.0
    poly = poly * r + 1.0 / 362880.0
    poly = poly * r + 1.0 / 40320.0
    poly = poly * r + 1.0 / 5040.0
    poly = poly * r + 1.0 / 720.0
    poly = poly * r + 1.0 / 120.0
    poly = poly * r + 1.0 / 24.0
    poly = poly * r + 1.0 / 6.0
    poly = poly * r + 0.5
    poly = poly * r + 1.0
    poly = poly * r + 1.0
    k = shifted.to(tl.int64, bitcast=True) - EXP_SHIFT_BITS
    scale = ((k + 1023) << 52).to(tl.float64, bitcast=True)
    return tl.where(in_range, poly * scale, 0.0)


@triton.jit
def _order_key(z):
    """int32 key with the order of float32 z (NaN excluded)."""
    bits = z.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ INT32_MAX)


@triton.jit(do_not_specialize=["rows", "top_k"])
def _process_rows_kernel(logits_ptr, out_ptr, bad_ptr, rows, V, top_k, scale_bits, temperature_bits, top_p_bits,
                         CFG: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cond = logits_ptr + row * V
    uncond = logits_ptr + (rows + row) * V  # read only with CFG: the uncond half follows the cond half
    out = out_ptr + row * V
    scale = scale_bits.to(tl.int64).to(tl.float64, bitcast=True)
    temperature = temperature_bits.to(tl.int64).to(tl.float64, bitcast=True)
    top_p = top_p_bits.to(tl.int64).to(tl.float64, bitcast=True)

    # Pass 1: processed logits z (float64 steps, one float32 rounding) into out; their max; finiteness.
    z_max = tl.full((), float("-inf"), tl.float32)
    n_bad = tl.zeros((), tl.int32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        m = offs < V
        lc = tl.load(cond + offs, mask=m, other=0.0).to(tl.float32).to(tl.float64)
        if CFG:
            lu = tl.load(uncond + offs, mask=m, other=0.0).to(tl.float32).to(tl.float64)
            lc = lu + scale * (lc - lu)
        z = (lc / temperature).to(tl.float32)
        tl.store(out + offs, z, mask=m)
        n_bad += tl.sum((m & ~(z < float("inf"))).to(tl.int32), 0)
        z_max = tl.maximum(z_max, tl.max(tl.where(m, z, float("-inf")), 0))
    tl.debug_barrier()
    bad = (n_bad > 0) | (z_max == float("-inf"))
    shift = z_max.to(tl.float64)

    # top-k: the largest key t with count(key(z) >= t) >= k.
    threshold_key = tl.full((), INT32_MIN, tl.int64)
    if TOP_K:
        lo = tl.full((), INT32_MIN, tl.int64)
        hi = tl.full((), INT32_MAX, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo + 1) // 2
            count = tl.zeros((), tl.int64)
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + tl.arange(0, BLOCK_V)
                m = offs < V
                key = _order_key(tl.load(out + offs, mask=m, other=float("-inf"))).to(tl.int64)
                count += tl.sum((m & (key >= mid)).to(tl.int64), 0)
            enough = count >= top_k
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
        threshold_key = lo

    # Normaliser over the kept entries.
    total = tl.zeros((), tl.float64)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        m = offs < V
        z = tl.load(out + offs, mask=m, other=float("-inf"))
        keep = m & (_order_key(z).to(tl.int64) >= threshold_key)
        total += tl.sum(tl.where(keep, exp_nonpositive(z.to(tl.float64) - shift), 0.0), 0)

    # top-p: the smallest cut key t (over p1 = float32(e / total) >= 0) whose strictly-above mass is < top_p.
    cut_key = tl.zeros((), tl.int64)
    if TOP_P:
        lo = tl.zeros((), tl.int64)
        hi = tl.full((), POS_INF_BITS, tl.int64)
        for _ in range(32):
            mid = (lo + hi) // 2
            above = tl.zeros((), tl.float64)
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + tl.arange(0, BLOCK_V)
                m = offs < V
                z = tl.load(out + offs, mask=m, other=float("-inf"))
                keep = m & (_order_key(z).to(tl.int64) >= threshold_key)
                p1 = tl.where(keep, exp_nonpositive(z.to(tl.float64) - shift), 0.0) / total
                p1 = p1.to(tl.float32)
                take = p1.to(tl.int32, bitcast=True).to(tl.int64) > mid
                above += tl.sum(tl.where(take, p1.to(tl.float64), 0.0), 0)
            ok = above < top_p
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid + 1)
        cut_key = lo
        kept_total = tl.zeros((), tl.float64)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            m = offs < V
            z = tl.load(out + offs, mask=m, other=float("-inf"))
            keep = m & (_order_key(z).to(tl.int64) >= threshold_key)
            e = tl.where(keep, exp_nonpositive(z.to(tl.float64) - shift), 0.0)
            p1 = (e / total).to(tl.float32)
            kept_total += tl.sum(tl.where(p1.to(tl.int32, bitcast=True).to(tl.int64) >= cut_key, e, 0.0), 0)
        final_total = kept_total
    else:
        final_total = total

    # Probabilities: float32(e / total) over the kept entries.
    tl.debug_barrier()
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        m = offs < V
        z = tl.load(out + offs, mask=m, other=float("-inf"))
        keep = _order_key(z).to(tl.int64) >= threshold_key
        e = tl.where(keep, exp_nonpositive(z.to(tl.float64) - shift), 0.0)
        if TOP_P:
            p1 = (e / total).to(tl.float32)
            e = tl.where(p1.to(tl.int32, bitcast=True).to(tl.int64) >= cut_key, e, 0.0)
        tl.store(out + offs, (e / final_total).to(tl.float32), mask=m)
    tl.store(bad_ptr + row, bad.to(tl.int8))


def process_logits_triton(logits, cfg_scale, temperature, top_k, top_p):
    """``(probs [rows, S, V] float32, bad [rows, S] bool)`` with ``rows`` = logits rows (halved with CFG)."""
    logits = logits.contiguous()
    total_rows, slots, vocab = logits.shape
    cfg = cfg_scale is not None
    rows = (total_rows // 2 if cfg else total_rows) * slots
    out = torch.empty(rows // slots if rows else 0, slots, vocab, dtype=torch.float32, device=logits.device)
    bad = torch.zeros(out.shape[:2], dtype=torch.int8, device=logits.device)
    if rows == 0:
        return out, bad.bool()
    block_v = c.vocab_block(vocab)
    _process_rows_kernel[(rows,)](
        logits, out, bad, rows, vocab, int(top_k), c.f64_bits(cfg_scale if cfg else 0.0),
        c.f64_bits(max(float(temperature), MIN_TEMPERATURE)), c.f64_bits(top_p), CFG=cfg,
        TOP_K=0 < top_k < vocab, TOP_P=top_p < 1.0, BLOCK_V=block_v, **c.launch_options(block_v),
    )
    return out, bad.bool()


def _uniform_ok(u):
    return (u >= 0) & (u < 1)


def _neighbor_bad(neighbors, tokens, vocab):
    """Per token: a neighbour id outside [0, V) or equal to the token (tokens clamped into range first)."""
    rows = neighbors[tokens.clamp(0, vocab - 1)].long()
    return ((rows < 0) | (rows >= vocab) | (rows == tokens.clamp(0, vocab - 1)[..., None])).any(-1)


def _first_code(*conditions):
    """The contract's first-failure-wins code per row from (code, bool [B]) pairs, 0 when none holds."""
    code = torch.zeros_like(conditions[0][1], dtype=torch.int64)
    for value, cond in reversed(conditions):
        code = torch.where(cond, value, code)
    return code


def verify_chain_logits_triton(logits, draft_logits, draft_probs, draft, u_accept, u_sample, num_drafts, cfg_scale,
                               temperature, top_k, top_p, method, neighbors, embeddings, params):
    """Launcher with the ``verify_chain_logits`` op schema; returns ``(accept_len, next_token)`` [B] int64."""
    method = int(method)
    p, bad_p = process_logits_triton(logits, cfg_scale, temperature, top_k, top_p)
    batch, slots, vocab = p.shape
    drafts = slots - 1
    q, bad_q = None, None
    if draft_logits is not None:
        doubled = cfg_scale is not None and draft_logits.shape[0] == 2 * batch
        q, bad_q = process_logits_triton(draft_logits, cfg_scale if doubled else None, temperature, top_k, top_p)
    elif draft_probs is not None:
        q = draft_probs.float().contiguous()
        bad_q = ~((q >= 0) & (q < float("inf"))).all(-1)

    # Row codes 1, 2, 4, 5 before any verification; bad rows run as empty chains and are overwritten after.
    n = num_drafts
    used = torch.arange(drafts, device=p.device) < n[:, None]
    conditions = [(1, (n < 0) | (n > drafts)),
                  (2, (used & ((draft < 0) | (draft >= vocab))).any(-1))]
    if method == 2:
        conditions.append((4, (used & _neighbor_bad(neighbors, draft, vocab)).any(-1)))
    conditions.append((5, (used & ~_uniform_ok(u_accept)).any(-1) | ~_uniform_ok(u_sample)))
    code = _first_code(*conditions)
    ok_row = code == 0
    safe_n = torch.where(ok_row, n, 0)
    safe_draft = torch.where(used & ok_row[:, None], draft, 0)
    accept_len, next_token = verify_chain_triton(p, q, safe_draft, u_accept, u_sample, safe_n, method, neighbors,
                                                 embeddings, params)

    # Code 6: a processed row the verification read (rows 0..a; draft rows up to a that were tested).
    read = torch.arange(slots, device=p.device) <= accept_len[:, None]
    bad = (bad_p & read).any(-1)
    if bad_q is not None:
        bad = bad | (bad_q & read[:, :drafts] & used).any(-1)
    code = torch.where(ok_row & bad, 6, code)
    return torch.where(code > 0, 0, accept_len), torch.where(code > 0, -code, next_token)


def verify_tree_logits_triton(logits, draft_probs, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg_scale,
                              temperature, top_k, top_p, method, neighbors, params):
    """Launcher with the ``verify_tree_logits`` op schema; returns ``(accepted_nodes, accept_len, next_token)``."""
    method = int(method)
    p, bad_p = process_logits_triton(logits, cfg_scale, temperature, top_k, top_p)
    batch, nodes, vocab = p.shape
    q = None if draft_probs is None else draft_probs.float().contiguous()
    node = torch.arange(nodes, device=p.device)
    nn = num_nodes
    valid = node < nn[:, None]
    malformed = (parents[:, 0] != -1) | (valid & (node > 0) & ((parents < 0) | (parents >= node))).any(-1)
    conditions = [(1, (nn < 1) | (nn > nodes)),
                  (2, (valid & ((tree_tokens < 0) | (tree_tokens >= vocab))).any(-1)),
                  (3, malformed)]
    if method == 2:
        conditions.append((4, (valid & _neighbor_bad(neighbors, tree_tokens, vocab)).any(-1)))
    conditions.append((5, (valid & ~_uniform_ok(u_accept)).any(-1) | ~_uniform_ok(u_sample)))
    code = _first_code(*conditions)
    ok_row = code == 0
    safe_nn = torch.where(ok_row, nn, 1)
    safe_parents = torch.where(ok_row[:, None], parents, -1)
    safe_tokens = torch.where(valid & ok_row[:, None], tree_tokens, 0)
    accepted, accept_len, next_token = verify_tree_triton(p, q, safe_tokens, safe_parents, u_accept, u_sample,
                                                          safe_nn, method, neighbors, params)

    # Code 6: the rows the walk stood on (the root and the accepted nodes); q rows of those with children.
    visited = torch.zeros(batch, nodes, dtype=torch.bool, device=p.device)
    visited[:, 0] = True
    if nodes > 1:  # accepted node ids are >= 1: the -1 padding (clamped to 0) writes False only onto the root
        visited.scatter_(1, accepted.clamp_min(0), accepted >= 0)
        visited[:, 0] = True
    bad = (bad_p & visited).any(-1)
    if q is not None:
        child = (valid & (node > 0) & ok_row[:, None]).long()
        has_child = torch.zeros(batch, nodes, dtype=torch.int64, device=p.device)
        # Parents of nodes past num_nodes are unchecked (any value): they add nothing, so index them at 0.
        child_parent = torch.where(valid, safe_parents, 0).clamp_min(0)
        has_child = has_child.scatter_add_(1, child_parent, child) > 0
        bad_q = ~((q >= 0) & (q < float("inf"))).all(-1)
        bad = bad | (bad_q & visited & has_child).any(-1)
    code = torch.where(ok_row & bad, 6, code)
    failed = code > 0
    return (torch.where(failed[:, None], -1, accepted), torch.where(failed, 0, accept_len),
            torch.where(failed, -code, next_token))
