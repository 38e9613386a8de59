"""Triton CSpD verification: Gaussian acceptance and acceptance-rejection resampling, per token, in float64.

Grid: one program per BLOCK_N tokens; a [BLOCK_N, BLOCK_D] tile holds their D dims. Pointers (contiguous, f32):
x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p [N, D], u_accept [N], u_prop [N, K, D], u_ar [N, K]; written: tokens [N, D]
f32, accepted / fallback [N] (bool storage as uint8), status [N] int32. Tries run while any token of the tile is still
rejected and unresolved (at most K). Phi^-1(u) = sqrt(2) erfinv(2u - 1) with u clamped to [2^-24, 1 - 2^-24]; erfinv
is a rational first guess refined by Newton steps on tl.erf (no libdevice), expm1 is Kahan's exp/log form. Sums over
D are tree reductions in float64 (pairwise: within a few roundings of the result, as the reference's sum).
Row status (methods.h): a bad u_accept (5) or a NaN / inf input / sigma <= 0 (6), checked first, or a bad u_prop /
u_ar of a try the token computes (5) ends the token: tokens NaN, accepted = fallback = 0, status = -code.
"""

import torch
import triton
import triton.language as tl

from . import _common as c

U_MIN: tl.constexpr = tl.constexpr(5.9604644775390625e-08)  # 2^-24
SQRT2: tl.constexpr = tl.constexpr(1.4142135623730951)
TWO_OVER_SQRT_PI: tl.constexpr = tl.constexpr(1.1283791670955126)
DBL_MAX: tl.constexpr = tl.constexpr(1.7976931348623157e308)
FLT_MAX: tl.constexpr = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _erfinv(y):
    """erf^-1 in float64 for |y| < 1: Giles' single-precision rational guess, then three Newton steps."""
    w = -tl.log((1.0 - y) * (1.0 + y))
    v = w - 2.5
    central = 2.81022636e-08
    central = central * v + 3.43273939e-07
    central = central * v + -3.5233877e-06
    central = central * v + -4.39150654e-06
    central = central * v + 0.00021858087
    central = central * v + -0.00125372503
    central = central * v + -0.00417768164
    central = central * v + 0.246640727
    central = central * v + 1.50140941
    s = tl.sqrt(tl.maximum(w, 5.0)) - 3.0
    tail = -0.000200214257
    tail = tail * s + 0.000100950558
    tail = tail * s + 0.00134934322
    tail = tail * s + -0.00367342844
    tail = tail * s + 0.00573950773
    tail = tail * s + -0.0076224613
    tail = tail * s + 0.00943887047
    tail = tail * s + 1.00167406
    tail = tail * s + 2.83297682
    x = tl.where(w < 5.0, central, tail) * y
    for _ in tl.static_range(3):
        x = x - (tl.erf(x) - y) / (TWO_OVER_SQRT_PI * tl.exp(-x * x))
    return x


@triton.jit
def _expm1(x):
    """exp(x) - 1 accurate near 0 (Kahan): (e - 1) * x / log(e) with e = exp(x)."""
    e = tl.exp(x)
    em1 = e - 1.0
    overflow = e > DBL_MAX
    safe = tl.where((e == 1.0) | (em1 == -1.0) | overflow, 2.0, e)
    out = em1 * x / tl.log(safe)
    out = tl.where(e == 1.0, x, out)
    out = tl.where(em1 == -1.0, -1.0, out)
    return tl.where(overflow, e, out)


@triton.jit
def _non_finite(v):
    """True where a float32 input is NaN or +-inf."""
    return ~((v >= -FLT_MAX) & (v <= FLT_MAX))


@triton.jit
def _bad_sigma(v):
    """True where a standard deviation is not finite and > 0 (NaN included)."""
    return ~((v > 0.0) & (v <= FLT_MAX))


@triton.jit(do_not_specialize=["N", "K"])
def _cspd_verify_kernel(x_ptr, mu_q_ptr, sigma_q_ptr, mu_p_ptr, sigma_p_ptr, s_q_ptr, s_p_ptr, u_accept_ptr, u_prop_ptr,
                        u_ar_ptr, tokens_ptr, accepted_ptr, fallback_ptr, status_ptr, N, D, K, tau_bits,
                        BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    rm = rows < N
    m2 = rm[:, None] & (dims < D)[None, :]
    off = rows[:, None] * D + dims[None, :]
    tau = tau_bits.to(tl.int64).to(tl.float64, bitcast=True)
    x32 = tl.load(x_ptr + off, mask=m2, other=0.0)
    mq32 = tl.load(mu_q_ptr + off, mask=m2, other=0.0)
    sq32 = tl.load(sigma_q_ptr + off, mask=m2, other=1.0)
    mp32 = tl.load(mu_p_ptr + off, mask=m2, other=0.0)
    sp32 = tl.load(sigma_p_ptr + off, mask=m2, other=1.0)
    s_q32 = tl.load(s_q_ptr + off, mask=m2, other=0.0)
    s_p32 = tl.load(s_p_ptr + off, mask=m2, other=0.0)
    u_acc32 = tl.load(u_accept_ptr + rows, mask=rm, other=0.5)
    # Row status before any arithmetic: 5 for u_accept, else 6 for a NaN / inf input or a sigma <= 0.
    bad_in = (_non_finite(x32) | _non_finite(mq32) | _non_finite(mp32) | _non_finite(s_q32) | _non_finite(s_p32)
              | _bad_sigma(sq32) | _bad_sigma(sp32))
    status = tl.where(tl.max(bad_in.to(tl.int32), 1) != 0, -c.ROW_BAD_PROB, 0)
    status = tl.where(c.bad_uniform(u_acc32), -c.ROW_BAD_UNIFORM, status)
    status = tl.where(rm, status, 0)
    good = status == 0
    g2 = m2 & good[:, None]  # bad tokens compute on harmless stand-ins (their outputs are replaced)
    x = tl.where(g2, x32, 0.0).to(tl.float64)
    mq = tl.where(g2, mq32, 0.0).to(tl.float64)
    sq = tl.where(g2, sq32, 1.0).to(tl.float64)
    mp = tl.where(g2, mp32, 0.0).to(tl.float64)
    sp = tl.where(g2, sp32, 1.0).to(tl.float64)
    # log c's share per dim: each sum runs over d of a dim's whole term (no two large sums cancel)
    log_c_terms = tl.where(g2, s_q32, 0.0).to(tl.float64) - tl.where(g2, s_p32, 0.0).to(tl.float64)
    log_sq = tl.log(sq)
    log_sp = tl.log(sp)
    zp = (x - mp) / (tau * sp)
    zq = (x - mq) / (tau * sq)
    log_rho = tl.sum(tl.where(m2, -0.5 * zp * zp + 0.5 * zq * zq + log_sq - log_sp + log_c_terms, 0.0), 1)
    u_acc = tl.where(good, u_acc32, 1.0).to(tl.float64)
    accepted = rm & good & (tl.log(u_acc) < log_rho)

    active = rm & good & (accepted == 0)
    found = tl.zeros([BLOCK_N], tl.int1)
    y_pick = tl.zeros([BLOCK_N, BLOCK_D], tl.float64)
    t = tl.zeros((), tl.int32)
    while (t < K) & (tl.sum(active.to(tl.int32), 0) > 0):
        u32 = tl.load(u_prop_ptr + (rows[:, None] * K + t) * D + dims[None, :], mask=m2 & active[:, None], other=0.5)
        u_ar32 = tl.load(u_ar_ptr + rows * K + t, mask=active, other=0.5)
        bad_u = active & ((tl.max((m2 & c.bad_uniform(u32)).to(tl.int32), 1) != 0) | c.bad_uniform(u_ar32))
        status = tl.where(bad_u, -c.ROW_BAD_UNIFORM, status)
        active = active & (bad_u == 0)  # a bad uniform ends the token before its test
        u = tl.where(m2 & active[:, None], u32, 0.5).to(tl.float64)
        u = tl.minimum(tl.maximum(u, U_MIN), 1.0 - U_MIN)
        y = mp + sp * (SQRT2 * _erfinv(2.0 * u - 1.0))
        zq_y = (y - mq) / sq
        zp_y = (y - mp) / sp
        # log q0(y) - log c - log p0(y), dim by dim (the 0.5 log 2 pi terms cancel), as every backend sums it
        log_ratio = tl.sum(tl.where(m2, -0.5 * zq_y * zq_y + 0.5 * zp_y * zp_y - log_sq + log_sp - log_c_terms, 0.0),
                           1)
        u_ar = u_ar32.to(tl.float64)
        take = active & (u_ar < -_expm1(log_ratio))
        y_pick = tl.where(active[:, None], y, y_pick)  # the latest proposal: y_K if no try is taken
        found = found | take
        active = active & (take == 0)
        t += 1
    good = status == 0
    tokens = tl.where(accepted[:, None], x32, y_pick.to(tl.float32))
    tokens = tl.where(good[:, None], tokens, float("nan"))
    tl.store(tokens_ptr + off, tokens, mask=m2)
    tl.store(accepted_ptr + rows, accepted.to(tl.uint8), mask=rm)
    tl.store(fallback_ptr + rows, (rm & good & (accepted == 0) & (found == 0)).to(tl.uint8), mask=rm)
    tl.store(status_ptr + rows, status.to(tl.int32), mask=rm)


def cspd_verify_triton(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar, inner_temperature):
    """Launcher with the ``cspd_verify`` op schema; returns ``(tokens [N, D] f32, accepted [N] bool,
    fallback [N] bool, status [N] int32)``."""
    x = x.contiguous()
    n, dim = x.shape
    tries = u_prop.shape[1]
    tokens = torch.empty_like(x)
    accepted = torch.empty(n, dtype=torch.bool, device=x.device)
    fallback = torch.empty(n, dtype=torch.bool, device=x.device)
    status = torch.empty(n, dtype=torch.int32, device=x.device)
    if n == 0:
        return tokens, accepted, fallback, status
    g = c.nonempty  # dim == 0 leaves the [N, 0] tensors empty: every load is masked
    block_d = c.next_pow2(dim)
    # 256 float64 elements per tile keep a GPU program in registers (no spills at 4 warps); the interpreter's
    # cost grows with the number of programs, so it takes 1024.
    block_n = max(1, min(c.next_pow2(n), (256 if x.is_cuda else 1024) // block_d))
    with c.on_device(x):
        _cspd_verify_kernel[(triton.cdiv(n, block_n),)](
            g(x), g(mu_q.contiguous()), g(sigma_q.contiguous()), g(mu_p.contiguous()), g(sigma_p.contiguous()),
            g(s_q.contiguous()), g(s_p.contiguous()), u_accept.contiguous(), g(u_prop.contiguous()), u_ar.contiguous(),
            g(tokens), accepted.view(torch.uint8), fallback.view(torch.uint8), status, n, dim, tries,
            c.f64_bits(inner_temperature), BLOCK_N=block_n, BLOCK_D=block_d, **c.launch_options(block_n * block_d),
        )
    return tokens, accepted, fallback, status
