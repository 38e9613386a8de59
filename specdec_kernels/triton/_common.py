"""Pieces shared by the Triton kernels: launch settings and the ``@triton.jit`` row helpers.

Numerics mirror ``specdec_kernels.reference`` (docs/ALGORITHMS.md §3.8): probabilities are read as float32 and every
sum that decides a token (inverse-CDF, LANTERN prefix, GSD group masses) runs in float64. Prefix sums are
``tl.cumsum`` over a chunk with the running carry folded into the chunk's first element, so the interpreter
(a sequential cumsum) reproduces the reference's sequential float64 cumsum exactly; a GPU scan may differ by float64
rounding, which can flip a token only at a cumulative-sum boundary (the accepted caveat). Kernels are launched with
``enable_fp_fusion=False`` so that no multiply-add is contracted into an FMA the reference does not perform.
"""

import contextlib
import struct

import torch
import triton
import triton.language as tl

from .. import _methods

#: Largest vocabulary chunk one program loads at a time (a power of two). Rows longer than this are processed in
#: chunks; tests lower it to exercise the chunk loops on small vocabularies.
MAX_VOCAB_BLOCK = 2048

#: Largest chunk of a neighbour row (LANTERN prefix sums, merged-neighbour scatters) loaded at a time.
MAX_NEIGHBOR_BLOCK = 128

INT64_MAX: tl.constexpr = tl.constexpr(9223372036854775807)
LOW32: tl.constexpr = tl.constexpr(4294967295)
#: Largest finite float32: a probability read as float32 is finite iff |v| <= FLT_MAX.
FLT_MAX: tl.constexpr = tl.constexpr(3.4028234663852886e38)

# Method codes, generated from the one table (specdec_kernels/_methods.py): one tl.constexpr global per method,
# named after it in capitals (EXACT, GSD, LANTERN, TYPICAL, ...), so kernels compare METHOD == c.GSD and a new
# method needs no line here.
for _method in _methods.METHODS.values():
    assert _method.name.isidentifier(), _method.name
    globals()[_method.name.upper()] = tl.constexpr(_method.code)
del _method
# Row status codes, from the same module.
ROW_BAD_COUNT: tl.constexpr = tl.constexpr(_methods.ROW_BAD_COUNT)
ROW_BAD_ID: tl.constexpr = tl.constexpr(_methods.ROW_BAD_ID)
ROW_BAD_PARENTS: tl.constexpr = tl.constexpr(_methods.ROW_BAD_PARENTS)
ROW_BAD_NEIGHBOR: tl.constexpr = tl.constexpr(_methods.ROW_BAD_NEIGHBOR)
ROW_BAD_UNIFORM: tl.constexpr = tl.constexpr(_methods.ROW_BAD_UNIFORM)
ROW_BAD_PROB: tl.constexpr = tl.constexpr(_methods.ROW_BAD_PROB)
ROW_BAD_METHOD: tl.constexpr = tl.constexpr(_methods.ROW_BAD_METHOD)
# Residual kinds (``_methods.RESIDUALS``): what a rule's recovered token is sampled from.
RESIDUAL_OVER_Q: tl.constexpr = tl.constexpr(_methods.RESIDUALS.index("over_q"))
RESIDUAL_OVER_RELAXED: tl.constexpr = tl.constexpr(_methods.RESIDUALS.index("over_relaxed"))
RESIDUAL_TARGET: tl.constexpr = tl.constexpr(_methods.RESIDUALS.index("target"))


def rule_constexprs(method) -> dict:
    """The compile-time arguments a walk takes for ``method`` (a ``_methods.Method``, or None for a code the table
    does not hold): its code (which acceptance test runs) and the traits every other branch of the walk follows.
    ``KNOWN`` False makes every row report ``ROW_BAD_METHOD`` (the launchers refuse such codes before any launch;
    the kernels do not rely on it)."""
    if method is None:
        return {"METHOD": -1, "KNOWN": False, "READS_WHOLE_ROW": False, "NEEDS_NEIGHBORS": False,
                "RESIDUAL": _methods.RESIDUALS.index("over_q")}
    return {"METHOD": method.code, "KNOWN": True, "READS_WHOLE_ROW": method.reads_whole_row,
            "NEEDS_NEIGHBORS": "neighbors" in method.needs, "RESIDUAL": _methods.RESIDUALS.index(method.residual)}


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def vocab_block(vocab: int) -> int:
    """Chunk width for a loop over ``vocab`` entries."""
    return min(next_pow2(vocab), MAX_VOCAB_BLOCK)


def neighbor_block(k: int) -> int:
    """Chunk width for a loop over a neighbour row of ``k`` entries."""
    return min(next_pow2(k), MAX_NEIGHBOR_BLOCK)


def launch_options(block: int) -> dict:
    """Keyword launch options: warps for a chunk of ``block`` elements, and no FMA contraction (the interpreter
    ignores both)."""
    return {"num_warps": 4 if block <= 1024 else 8, "enable_fp_fusion": False}


def f64_bits(value: float) -> int:
    """The IEEE bits of ``value`` as a signed int64; kernels bitcast them back (Triton passes Python floats as
    float32, and a LANTERN budget must stay float64)."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def to_f32(value: float) -> float:
    """``value`` rounded to float32, as the reference's float32 comparisons see a Python threshold (values beyond
    the float32 range become +-inf, as a float32 cast does)."""
    return float(torch.tensor(float(value), dtype=torch.float64).to(torch.float32))


def on_device(t: torch.Tensor):
    """Context that makes ``t``'s GPU the current one for a launch (Triton launches on the current device);
    nothing on CPU (the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def gsd_window(h_lo, h_hi, vocab: int):
    """GSD's window capped at ``vocab - 1`` (``_methods.gsd_window``): the kernels loop over it."""
    return _methods.gsd_window(int(h_lo), int(h_hi), vocab)


def nonempty(t: torch.Tensor) -> torch.Tensor:
    """A one-element stand-in for an empty tensor (never dereferenced), so that no launch gets a null pointer."""
    return t if t.numel() > 0 else torch.empty(1, dtype=t.dtype, device=t.device)


# ---------------------------------------------------------------------------------------------- value checks


@triton.jit
def bad_value(v32):
    """True where a probability (read as float32) is NaN, inf or negative (row status code 6)."""
    return ~((v32 >= 0.0) & (v32 <= FLT_MAX))


@triton.jit
def non_finite(v):
    """True where a float32 value is NaN or +-inf (codebook entries, embeddings: row status code 6)."""
    return ~((v >= -FLT_MAX) & (v <= FLT_MAX))


@triton.jit
def bad_uniform(u):
    """True where a uniform lies outside [0, 1], NaN included (row status code 5; 1.0 is valid, §3.1)."""
    return ~((u >= 0.0) & (u <= 1.0))


@triton.jit
def row_has_bad(row, use, V, BLOCK_V: tl.constexpr):
    """One pass over ``row`` [V] (when ``use``): does it hold a NaN, inf or negative value."""
    bad = tl.zeros((), tl.int32)
    if use:
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            m = offs < V
            vals = tl.load(row + offs, mask=m, other=0.0).to(tl.float32)
            bad = tl.maximum(bad, tl.max((m & bad_value(vals)).to(tl.int32), 0))
    return bad != 0


@triton.jit
def row_bad_or_empty(row, use, V, BLOCK_V: tl.constexpr):
    """One pass over ``row`` [V] (when ``use``): does it hold a NaN, inf or negative value, or no mass (float64 sum
    <= 0): the code-6 test of a p row a tree walk loads."""
    bad = tl.zeros((), tl.int32)
    total = tl.zeros((), tl.float64)
    if use:
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            m = offs < V
            vals = tl.load(row + offs, mask=m, other=0.0).to(tl.float32)
            bad = tl.maximum(bad, tl.max((m & bad_value(vals)).to(tl.int32), 0))
            total += tl.sum(vals.to(tl.float64), 0)
    return use & ((bad != 0) | ((total > 0.0) == 0))


@triton.jit
def ids_out_of_range(ptr, count, V, BLOCK: tl.constexpr):
    """Does any of the ``count`` int64 ids at ``ptr`` lie outside [0, V)."""
    bad = tl.zeros((), tl.int32)
    for i0 in range(0, count, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        m = offs < count
        ids = tl.load(ptr + offs, mask=m, other=0)
        bad = tl.maximum(bad, tl.max((m & ((ids < 0) | (ids >= V))).to(tl.int32), 0))
    return bad != 0


@triton.jit
def uniforms_out_of_range(ptr, count, BLOCK: tl.constexpr):
    """Does any of the ``count`` float32 uniforms at ``ptr`` lie outside [0, 1] (NaN included)."""
    bad = tl.zeros((), tl.int32)
    for i0 in range(0, count, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        m = offs < count
        u = tl.load(ptr + offs, mask=m, other=0.0)
        bad = tl.maximum(bad, tl.max((m & bad_uniform(u)).to(tl.int32), 0))
    return bad != 0


@triton.jit
def neighbor_row_bad(nbr_ptr, token, K, V, BLOCK_K: tl.constexpr):
    """Does the table row of ``token`` (in [0, V)) hold an id outside [0, V) or ``token`` itself (code 4)."""
    bad = tl.zeros((), tl.int32)
    row = nbr_ptr + token.to(tl.int64) * K
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        m = ks < K
        ids = tl.load(row + ks, mask=m, other=0).to(tl.int64)
        bad = tl.maximum(bad, tl.max((m & ((ids < 0) | (ids >= V) | (ids == token))).to(tl.int32), 0))
    return bad != 0


# ---------------------------------------------------------------------------------------------- row weights


@triton.jit
def row_weights(p_row, q_row, s_row, s_div, offs, mask, x, mode, HAS_Q: tl.constexpr, HAS_S: tl.constexpr):
    """float64 sampling weights at ``offs``: mode 0 ``p``; mode 1 ``max(0, p - q)`` (q one-hot at ``x`` when
    ``HAS_Q`` is false); mode 2 ``s / s_div`` (a float64 scratch row). Zero outside ``mask``."""
    pj = tl.load(p_row + offs, mask=mask & (mode != 2), other=0.0).to(tl.float32).to(tl.float64)
    if HAS_Q:
        qj = tl.load(q_row + offs, mask=mask & (mode == 1), other=0.0).to(tl.float32).to(tl.float64)
    else:
        qj = tl.where(offs == x, 1.0, 0.0).to(tl.float64)
    w = tl.where(mode == 1, tl.maximum(pj - qj, 0.0), pj)
    if HAS_S:
        sj = tl.load(s_row + offs, mask=mask & (mode == 2), other=0.0)
        w = tl.where(mode == 2, sj / s_div, w)
    return tl.where(mask, w, 0.0)


@triton.jit
def weights_total(p_row, q_row, s_row, s_div, x, mode, V, HAS_Q: tl.constexpr, HAS_S: tl.constexpr,
                  BLOCK_V: tl.constexpr):
    """(sum of the weights as the reference's last cumsum entry, largest index with a positive weight or -1)."""
    total = tl.zeros((), tl.float64)
    last = tl.full((), -1, tl.int32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        mask = offs < V
        w = row_weights(p_row, q_row, s_row, s_div, offs, mask, x, mode, HAS_Q, HAS_S)
        c = tl.cumsum(tl.where(offs == v0, w + total, w), 0)
        end = tl.minimum(v0 + BLOCK_V, V) - 1
        total = tl.sum(tl.where(offs == end, c, 0.0), 0)
        last = tl.maximum(last, tl.max(tl.where(w > 0.0, offs, -1), 0))
    return total, last


@triton.jit
def weights_search(p_row, q_row, s_row, s_div, x, mode, threshold, last, V, HAS_Q: tl.constexpr,
                   HAS_S: tl.constexpr, BLOCK_V: tl.constexpr):
    """Inverse CDF: the smallest j with cumsum_j > threshold and w_j > 0, else ``last`` (0 if negative)."""
    carry = tl.zeros((), tl.float64)
    found = tl.full((), -1, tl.int32)
    v0 = tl.zeros((), tl.int32)
    while (v0 < V) & (found < 0):
        offs = v0 + tl.arange(0, BLOCK_V)
        mask = offs < V
        w = row_weights(p_row, q_row, s_row, s_div, offs, mask, x, mode, HAS_Q, HAS_S)
        c = tl.cumsum(tl.where(offs == v0, w + carry, w), 0)
        first = tl.min(tl.where(mask & (c > threshold) & (w > 0.0), offs, V), 0)
        found = tl.where(first < V, first, found)
        end = tl.minimum(v0 + BLOCK_V, V) - 1
        carry = tl.sum(tl.where(offs == end, c, 0.0), 0)
        v0 = v0 + BLOCK_V
    return tl.where(found >= 0, found, tl.maximum(last, 0)).to(tl.int64)


# ---------------------------------------------------------------------------------------------- LANTERN


@triton.jit
def gather_r(p_row, s_row, s_div, from_p, idx, mask, HAS_S: tl.constexpr):
    """r at ``idx`` in float64: the p row (``from_p`` != 0) or the scratch row divided by ``s_div``."""
    r = tl.load(p_row + idx, mask=mask & (from_p != 0), other=0.0).to(tl.float32).to(tl.float64)
    if HAS_S:
        s = tl.load(s_row + idx, mask=mask & (from_p == 0), other=0.0)
        r = tl.where(from_p != 0, r, s / s_div)
    return r


@triton.jit
def relaxed_mass(p_row, s_row, s_div, from_p, nbr_row, K, rx, budget_param, USE_LAMBDA: tl.constexpr,
                 HAS_S: tl.constexpr, BLOCK_K: tl.constexpr):
    """LANTERN relaxed mass of the candidate whose neighbour row is ``nbr_row`` (K int32 ids) under r (see
    ``gather_r``), with r(x) = ``rx``: returns (p_tilde = rx + c_m*, merged = m*, c_m*), c_m the float64 prefix
    sums in table order and m* the longest prefix with c_m <= budget (delta, or (lam - 1) * rx)."""
    if USE_LAMBDA:
        budget = (budget_param - 1.0) * rx
    else:
        budget = budget_param
    c = tl.zeros((), tl.float64)
    merged = tl.zeros((), tl.int32)
    k0 = tl.zeros((), tl.int32)
    go = k0 < K
    while go:
        offs = k0 + tl.arange(0, BLOCK_K)
        m = offs < K
        ids = tl.load(nbr_row + offs, mask=m, other=0).to(tl.int64)
        vals = gather_r(p_row, s_row, s_div, from_p, ids, m, HAS_S)
        pref = tl.cumsum(tl.where(offs == k0, vals + c, vals), 0)
        # "not (c_m <= budget)", not "c_m > budget": a NaN prefix or a NaN budget (lam = inf, r(x) = 0) ends
        # the prefix, as in the reference.
        first_out = tl.min(tl.where(m & ((pref <= budget) == 0), offs, K), 0)
        last_in = tl.max(tl.where(m & (offs < first_out), offs, -1), 0)
        c = tl.where(last_in >= k0, tl.sum(tl.where(offs == last_in, pref, 0.0), 0), c)
        merged = tl.where(last_in >= k0, last_in + 1, merged)
        k0 = k0 + BLOCK_K
        go = (first_out >= K) & (k0 < K)
    return rx + c, merged, c


@triton.jit
def neighbors_read_bad(p_row, nbr_row, count, BLOCK_K: tl.constexpr):
    """Does p hold a NaN, inf or negative value at one of the first ``count`` ids of ``nbr_row`` (the entries a
    relaxed-mass scan read: code 6 of ``lantern_relaxed_mass``)."""
    bad = tl.zeros((), tl.int32)
    for k0 in range(0, count, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        m = ks < count
        ids = tl.load(nbr_row + ks, mask=m, other=0).to(tl.int64)
        vals = tl.load(p_row + ids, mask=m, other=0.0).to(tl.float32)
        bad = tl.maximum(bad, tl.max((m & bad_value(vals)).to(tl.int32), 0))
    return bad != 0


# ---------------------------------------------------------------------------------------------- GSD


@triton.jit
def rank_key(p32, idx):
    """A key whose int64 order is GSD's rank order reversed: larger = more probable, ties to the lower id.
    (float bits of p >= 0, with -0.0 mapped to +0.0) << 32 | (2^32 - 1 - id)."""
    bits = tl.where(p32 == 0.0, 0.0, p32).to(tl.int32, bitcast=True).to(tl.int64)
    return (bits << 32) | (LOW32 - idx.to(tl.int64))


@triton.jit
def gsd_member(p_row, q_row, key, take, x, px, emb_ptr, D_EMB, p_thr, d_thr, HAS_Q: tl.constexpr,
               HAS_EMB: tl.constexpr):
    """(p, q) that window member ``key`` adds to the group: zero unless ``take`` and it passes the filters
    |p(j) - p(x)| < p_thr and (with embeddings) a sequential float32 squared distance < d_thr."""
    dp, dq, _ = gsd_member_checked(p_row, q_row, key, take, x, px, emb_ptr, D_EMB, p_thr, d_thr, HAS_Q, HAS_EMB)
    return dp, dq


@triton.jit
def gsd_member_checked(p_row, q_row, key, take, x, px, emb_ptr, D_EMB, p_thr, d_thr, HAS_Q: tl.constexpr,
                       HAS_EMB: tl.constexpr):
    """:func:`gsd_member` plus whether a value it reads is bad (code 6 of ``gsd_group_mass``): q of a kept member
    NaN / inf / negative, or a NaN / inf entry in the embedding row of j or x when their distance is computed."""
    j = LOW32 - (key & LOW32)  # a sentinel key decodes to id 0: in range, and masked by `take`
    pj = tl.load(p_row + j, mask=take, other=0.0).to(tl.float32)
    keep = take & (tl.abs(pj - px) < p_thr)
    bad = tl.zeros((), tl.int1)
    if HAS_EMB:
        compared = keep
        dist = tl.zeros((), tl.float32)
        for d in range(D_EMB):
            e_j = tl.load(emb_ptr + j * D_EMB + d, mask=take, other=0.0)
            e_x = tl.load(emb_ptr + x * D_EMB + d)
            bad = bad | (compared & (non_finite(e_j) | non_finite(e_x)))
            diff = e_j - e_x
            dist = dist + diff * diff
        keep = keep & (dist < d_thr)
    dp = tl.where(keep, pj.to(tl.float64), 0.0)
    if HAS_Q:
        q32 = tl.load(q_row + j, mask=keep, other=0.0).to(tl.float32)
        bad = bad | (keep & bad_value(q32))
        dq = tl.where(keep, q32.to(tl.float64), 0.0)
    else:
        dq = tl.zeros((), tl.float64)
    return dp, dq, bad


@triton.jit
def gsd_group_mass(p_row, q_row, x, V, emb_ptr, D_EMB, h_lo, h_hi, p_thr, d_thr, HAS_Q: tl.constexpr,
                   HAS_EMB: tl.constexpr, BLOCK_V: tl.constexpr):
    """GSD's (P_G, Q_G) in float64 for draft ``x`` of one row. Step i selects, in one pass over the row, the
    (i+1)-th token ranked just above x (smallest key above the previous one) and just below it; cost
    O(max(h_lo, h_hi) * V). Q_G = 1 without q."""
    group_p, group_q, _ = gsd_group_mass_checked(p_row, q_row, x, V, emb_ptr, D_EMB, h_lo, h_hi, p_thr, d_thr, HAS_Q,
                                                 HAS_EMB, BLOCK_V)
    return group_p, group_q


@triton.jit
def gsd_group_mass_checked(p_row, q_row, x, V, emb_ptr, D_EMB, h_lo, h_hi, p_thr, d_thr, HAS_Q: tl.constexpr,
                           HAS_EMB: tl.constexpr, BLOCK_V: tl.constexpr):
    """:func:`gsd_group_mass` plus whether a value read at a group member is bad (q of a member, x included, or an
    embedding row whose distance is computed; see :func:`gsd_member_checked`). The ranked row p is checked by the
    caller (:func:`row_has_bad`)."""
    px = tl.load(p_row + x).to(tl.float32)
    kx = rank_key(px, x)
    group_p = px.to(tl.float64)
    bad = tl.zeros((), tl.int1)
    if HAS_Q:
        qx = tl.load(q_row + x).to(tl.float32)
        bad = bad | bad_value(qx)
        group_q = qx.to(tl.float64)
    else:
        group_q = tl.full((), 1.0, tl.float64)
    above = kx
    below = kx
    for i in range(tl.maximum(h_lo, h_hi)):
        # per-lane candidates across the chunks, then one cross-lane reduction per side
        lane_above = tl.full([BLOCK_V], INT64_MAX, tl.int64)
        lane_below = tl.full([BLOCK_V], -1, tl.int64)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            m = offs < V
            key = rank_key(tl.load(p_row + offs, mask=m, other=0.0).to(tl.float32), offs)
            lane_above = tl.minimum(lane_above, tl.where(m & (key > above), key, INT64_MAX))
            lane_below = tl.maximum(lane_below, tl.where(m & (key < below), key, -1))
        next_above = tl.min(lane_above, 0)
        next_below = tl.max(lane_below, 0)
        take_above = (i < h_hi) & (next_above != INT64_MAX)
        take_below = (i < h_lo) & (next_below >= 0)
        dp, dq, bad_m = gsd_member_checked(p_row, q_row, next_above, take_above, x, px, emb_ptr, D_EMB, p_thr, d_thr,
                                           HAS_Q, HAS_EMB)
        group_p += dp
        bad = bad | bad_m
        if HAS_Q:
            group_q += dq
        dp, dq, bad_m = gsd_member_checked(p_row, q_row, next_below, take_below, x, px, emb_ptr, D_EMB, p_thr, d_thr,
                                           HAS_Q, HAS_EMB)
        group_p += dp
        bad = bad | bad_m
        if HAS_Q:
            group_q += dq
        above = tl.where(take_above, next_above, above)
        below = tl.where(take_below, next_below, below)
    return group_p, group_q, bad
