"""Row sources of the Triton verification kernels: where a walk gets the distribution row it reads.

A chain or tree walk (``verify_chain.py``, ``verify_tree.py``, the Jacobi step) reads one ``[V]`` row at a time
through :func:`load_row`, which returns a pointer to that row as float32-readable values and a flag for a row that
is not a distribution (row code 6). The source is a compile-time choice (``LOGITS``):

* a probability tensor ``[rows, S, V]`` (fp32 / fp16 / bf16): the row is read in place;
* raw logits ``[rows, S, V]`` (a doubled batch, cond rows first, with ``CFG``): the row is processed where the walk
  loads it (CFG, temperature, top-k, top-p, softmax: :func:`process_row`) into a float32 row buffer of the program
  (or straight into an output row, as the Jacobi refresh does for its new q), so only the rows a walk reads are
  processed and no ``[B, S, V]`` probability tensor exists.

Processing numerics are those of ``specdec_kernels.reference.verify_logits`` (float64 after the float32 processed
logit; the branch-free float64 ``exp`` of ``csrc/verify_logits_math.h``). top-k is an exact bisection over the
order-preserving int32 keys of the processed logits (the largest key with at least k entries at or above it);
top-p a bisection over the float32 probabilities' bits (the smallest cut whose strictly-above mass is < top_p),
both 32 counting passes over the row.
"""

import triton
import triton.language as tl

from . import _common as c

#: Clamp of the temperature (mirrors reference.verify_logits.MIN_TEMPERATURE).
MIN_TEMPERATURE = 1e-5

INT32_MIN: tl.constexpr = tl.constexpr(-2147483648)
INT32_MAX: tl.constexpr = tl.constexpr(2147483647)
POS_INF_BITS: tl.constexpr = tl.constexpr(0x7F800000)
EXP_SHIFT_BITS: tl.constexpr = tl.constexpr(c.f64_bits(6755399441055744.0))


class Processing:
    """The processing arguments of a logits source, as kernel arguments: float64 bits of ``cfg_scale``,
    ``temperature`` (clamped) and ``top_p``, ``top_k``, and the compile-time switches (``CFG``, ``TOP_K``,
    ``TOP_P``) for a vocabulary of ``vocab``."""

    def __init__(self, cfg_scale, temperature, top_k, top_p, vocab):
        self.cfg = cfg_scale is not None
        self.scale_bits = c.f64_bits(cfg_scale if self.cfg else 0.0)
        self.temperature_bits = c.f64_bits(max(float(temperature), MIN_TEMPERATURE))
        self.top_p_bits = c.f64_bits(top_p)
        self.top_k = int(top_k)
        self.use_top_k = 0 < int(top_k) < vocab
        self.use_top_p = float(top_p) < 1.0

    def args(self):
        """The run-time kernel arguments: ``top_k, scale_bits, temperature_bits, top_p_bits``."""
        return self.top_k, self.scale_bits, self.temperature_bits, self.top_p_bits


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
def order_key(z):
    """int32 key with the order of float32 z (NaN excluded)."""
    bits = z.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ INT32_MAX)


@triton.jit
def process_row(cond, uncond, out, V, top_k, scale_bits, temperature_bits, top_p_bits, CFG: tl.constexpr,
                TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK_V: tl.constexpr):
    """Processes one logits row (``cond``, and ``uncond`` with CFG) into float32 probabilities at ``out`` [V];
    returns True when the row is not a distribution (a NaN / +inf processed logit, or every one -inf)."""
    scale = scale_bits.to(tl.int64).to(tl.float64, bitcast=True)
    temperature = temperature_bits.to(tl.int64).to(tl.float64, bitcast=True)
    top_p = top_p_bits.to(tl.int64).to(tl.float64, bitcast=True)
    tl.debug_barrier()  # every lane has finished reading the row `out` held before

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
                key = order_key(tl.load(out + offs, mask=m, other=float("-inf"))).to(tl.int64)
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
        keep = m & (order_key(z).to(tl.int64) >= threshold_key)
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
                keep = m & (order_key(z).to(tl.int64) >= threshold_key)
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
            keep = m & (order_key(z).to(tl.int64) >= threshold_key)
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
        keep = order_key(z).to(tl.int64) >= threshold_key
        e = tl.where(keep, exp_nonpositive(z.to(tl.float64) - shift), 0.0)
        if TOP_P:
            p1 = (e / total).to(tl.float32)
            e = tl.where(p1.to(tl.int32, bitcast=True).to(tl.int64) >= cut_key, e, 0.0)
        tl.store(out + offs, (e / final_total).to(tl.float32), mask=m)
    tl.debug_barrier()  # the row is published to every lane before the walk reads it
    return bad


@triton.jit
def load_row(base, row, uncond_rows, buf, need, V, top_k, scale_bits, temperature_bits, top_p_bits,
             LOGITS: tl.constexpr, CFG: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK_V: tl.constexpr):
    """Row ``row`` (a flat row index into ``base`` [rows, V]) of a row source: ``(pointer to its V values, not a
    distribution)``. A tensor source returns the row in place (never flagged here: the walk checks the values it
    reads); a logits source processes it into ``buf`` when ``need`` (a run-time flag: a walk that already holds the
    row there passes False) and returns ``buf`` (its uncond row is ``row + uncond_rows`` with CFG)."""
    if LOGITS:
        bad = tl.zeros((), tl.int1)
        if need:
            bad = process_row(base + row * V, base + (row + uncond_rows) * V, buf, V, top_k, scale_bits,
                              temperature_bits, top_p_bits, CFG, TOP_K, TOP_P, BLOCK_V)
        return buf, bad
    else:
        return base + row * V, tl.zeros((), tl.int1)


class Source:
    """A row source for a launcher: ``tensor`` [rows, S, V] holding probabilities (``logits`` False) or raw logits
    (``logits`` True; ``cfg``: a doubled batch, cond rows first, whose uncond row of flat row r is
    ``r + uncond_rows``)."""

    def __init__(self, tensor, logits: bool = False, cfg: bool = False):
        self.tensor = tensor.contiguous()
        self.logits = bool(logits)
        self.cfg = bool(cfg)
        rows, slots, _ = self.tensor.shape
        self.uncond_rows = (rows // 2) * slots if self.cfg else 0
