"""Reference: continuous-token acceptance and residual sampling of CSpD (arXiv 2411.11925; docs/ALGORITHMS.md §3.6)."""

import math
from typing import Tuple

import torch

from .._methods import ROW_BAD_PROB, ROW_BAD_UNIFORM
from ._status import bad_uniform, first_code

_U_MIN = 2.0**-24  # proposals' uniforms are clamped to [2^-24, 1 - 2^-24] before the inverse normal CDF


def _log_ratio_sum(y: torch.Tensor, mu_q, sigma_q, mu_p, sigma_p, log_c_terms) -> torch.Tensor:
    """Sum over the last dim of log q0(y) - log c - log p0(y), dim by dim (the 0.5 log 2 pi terms cancel)."""
    zq = (y - mu_q) / sigma_q
    zp = (y - mu_p) / sigma_p
    return (-0.5 * zq * zq + 0.5 * zp * zp - torch.log(sigma_q) + torch.log(sigma_p) - log_c_terms).sum(-1)


def cspd_status(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept) -> torch.Tensor:
    """int64 ``(n,)``: the code of each token before any arithmetic (docs/ALGORITHMS.md §3.8): 5 for ``u_accept``
    outside [0, 1] or NaN, else 6 for a NaN / inf ``x, mu_q, mu_p, s_q, s_p`` entry or a ``sigma`` that is not finite
    and > 0, else 0."""
    finite = torch.stack([torch.isfinite(t).all(-1) for t in (x, mu_q, mu_p, s_q, s_p)]).all(0)
    sigmas_ok = torch.stack([((t > 0) & (t < math.inf)).all(-1) for t in (sigma_q, sigma_p)]).all(0)
    return first_code(x.shape[0], x.device, [(ROW_BAD_UNIFORM, bad_uniform(u_accept)),
                                             (ROW_BAD_PROB, ~(finite & sigmas_ok))])


def cspd_verify(
    x: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    mu_p: torch.Tensor,
    sigma_p: torch.Tensor,
    s_q: torch.Tensor,
    s_p: torch.Tensor,
    u_accept: torch.Tensor,
    u_prop: torch.Tensor,
    u_ar: torch.Tensor,
    *,
    inner_temperature: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accept or resample each continuous draft token independently.

    Shapes: ``x, mu_*, sigma_*, s_*`` are ``(n, D)``; ``u_accept (n,)``, ``u_prop (n, K, D)``,
    ``u_ar (n, K)``. With log c = sum_d (s_q - s_p) and tau = ``inner_temperature``:
    log rho = sum_d [-1/2 ((x-mu_p)/(tau sigma_p))^2 + 1/2 ((x-mu_q)/(tau sigma_q))^2 + log sigma_q
    - log sigma_p] + log c, and x is accepted iff log u_accept < log rho. A rejected token tries
    y_t = mu_p + sigma_p * Phi^-1(u_prop[t]) for t = 1..K, accepting y_t iff
    u_ar[t] < 1 - q0(y_t) / (c p0(y_t)) with untempered Gaussians; none accepted -> y_K, ``fallback``.
    All arithmetic in float64; each sum over D is accurate to a few roundings of its result (torch's pairwise
    float64 sum here, compensated sums in the kernels), so every backend takes the same decisions at D <= 2^20.

    Row status (docs/ALGORITHMS.md §3.8): a token whose ``u_accept`` lies outside [0, 1] (code 5) or whose inputs
    hold NaN / inf or a sigma <= 0 (code 6), or whose ``u_prop[i, t]`` / ``u_ar[i, t]`` of a try it computes (up
    to the first taken) holds a value outside [0, 1] (code 5), is not verified: tokens NaN, accepted and fallback
    False, ``status = -code``. Returns ``(tokens (n, D) x.dtype, accepted (n,) bool, fallback (n,) bool,
    status (n,) int32)``.
    """
    f = lambda t: t.to(torch.float64)  # noqa: E731
    n = x.shape[0]
    status = cspd_status(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept)
    ok = status == 0
    # Bad rows are computed on harmless stand-ins (their outputs are replaced below).
    clean = lambda t, fill: torch.where(ok[:, None], t, fill)  # noqa: E731
    x64, mq, mp = f(clean(x, 0.0)), f(clean(mu_q, 0.0)), f(clean(mu_p, 0.0))
    sq, sp = f(clean(sigma_q, 1.0)), f(clean(sigma_p, 1.0))
    # Each sum runs over d of a dim's whole term, log c's share s_q - s_p included: no two large sums cancel.
    log_c_terms = f(clean(s_q, 0.0)) - f(clean(s_p, 0.0))
    tau = float(inner_temperature)
    zp = (x64 - mp) / (tau * sp)
    zq = (x64 - mq) / (tau * sq)
    log_rho = (-0.5 * zp * zp + 0.5 * zq * zq + torch.log(sq) - torch.log(sp) + log_c_terms).sum(-1)
    accepted = ok & (torch.log(f(torch.where(ok, u_accept, 0.5))) < log_rho)

    # Tries: try t is computed iff the token was rejected and no earlier try was taken; a bad uniform in a
    # computed try ends the row with code 5 before its test.
    bad_try = bad_uniform(u_ar) | bad_uniform(u_prop).any(-1)  # (n, K)
    u = f(u_prop).nan_to_num(0.5).clamp(_U_MIN, 1.0 - _U_MIN)
    y = mp[:, None, :] + sp[:, None, :] * (math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0))  # (n, K, D)
    log_ratio = _log_ratio_sum(y, mq[:, None], sq[:, None], mp[:, None], sp[:, None], log_c_terms[:, None])
    take = ~bad_try & (f(u_ar) < -torch.expm1(log_ratio))  # u < 1 - q0 / (c p0)
    tries = take.shape[1]
    steps = torch.arange(tries, device=x.device)
    first_event = torch.where(take | bad_try, steps, tries).amin(dim=1)  # the try that ends the loop
    ended_bad = (first_event < tries) & bad_try.gather(1, first_event.clamp(max=tries - 1)[:, None]).squeeze(1)
    late_bad = ok & ~accepted & ended_bad
    status = torch.where(late_bad, -ROW_BAD_UNIFORM, -status)
    ok = ok & ~late_bad
    fallback = ok & ~accepted & (first_event == tries)
    pick = first_event.clamp(max=tries - 1)
    resampled = y[torch.arange(n, device=x.device), pick]
    tokens = torch.where(accepted[:, None], x64, resampled)
    tokens = torch.where(ok[:, None], tokens, math.nan).to(x.dtype)
    return tokens, accepted & ok, fallback, status.to(torch.int32)
