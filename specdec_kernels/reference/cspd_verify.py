"""Reference: continuous-token acceptance and residual sampling of CSpD (arXiv 2411.11925; docs/ALGORITHMS.md §3.6)."""

import math
from typing import Tuple

import torch

_U_MIN = 2.0**-24  # proposals' uniforms are clamped to [2^-24, 1 - 2^-24] before the inverse normal CDF


def _gauss_logpdf_sum(y: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of log N(y; mu, sigma^2)."""
    z = (y - mu) / sigma
    return (-0.5 * z * z - torch.log(sigma) - 0.5 * math.log(2.0 * math.pi)).sum(-1)


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
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accept or resample each continuous draft token independently.

    Shapes: ``x, mu_*, sigma_*, s_*`` are ``(n, D)``; ``u_accept (n,)``, ``u_prop (n, K, D)``,
    ``u_ar (n, K)``. With log c = sum_d (s_q - s_p) and tau = ``inner_temperature``:
    log rho = sum_d [-1/2 ((x-mu_p)/(tau sigma_p))^2 + 1/2 ((x-mu_q)/(tau sigma_q))^2 + log sigma_q
    - log sigma_p] + log c, and x is accepted iff log u_accept < log rho. A rejected token tries
    y_t = mu_p + sigma_p * Phi^-1(u_prop[t]) for t = 1..K, accepting y_t iff
    u_ar[t] < 1 - q0(y_t) / (c p0(y_t)) with untempered Gaussians; none accepted -> y_K, ``fallback``.
    All arithmetic in float64. Returns ``(tokens (n, D) x.dtype, accepted (n,) bool, fallback (n,) bool)``.
    """
    f = lambda t: t.to(torch.float64)  # noqa: E731
    x64, mq, sq, mp, sp = f(x), f(mu_q), f(sigma_q), f(mu_p), f(sigma_p)
    log_c = (f(s_q) - f(s_p)).sum(-1)
    tau = float(inner_temperature)
    zp = (x64 - mp) / (tau * sp)
    zq = (x64 - mq) / (tau * sq)
    log_rho = (-0.5 * zp * zp + 0.5 * zq * zq + torch.log(sq) - torch.log(sp)).sum(-1) + log_c
    accepted = torch.log(f(u_accept)) < log_rho

    u = f(u_prop).clamp(_U_MIN, 1.0 - _U_MIN)
    y = mp[:, None, :] + sp[:, None, :] * (math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0))  # (n, K, D)
    log_ratio = (
        _gauss_logpdf_sum(y, mq[:, None], sq[:, None]) - log_c[:, None] - _gauss_logpdf_sum(y, mp[:, None], sp[:, None])
    )
    take = f(u_ar) < -torch.expm1(log_ratio)  # u < 1 - q0 / (c p0)
    tries = take.shape[1]
    first = torch.where(take, torch.arange(tries, device=x.device), tries).amin(dim=1)
    fallback = (first == tries) & ~accepted
    pick = first.clamp(max=tries - 1)
    resampled = y[torch.arange(y.shape[0], device=x.device), pick]
    tokens = torch.where(accepted[:, None], x64, resampled).to(x.dtype)
    return tokens, accepted, fallback
