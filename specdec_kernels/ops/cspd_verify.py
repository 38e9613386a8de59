"""Public op: continuous-token acceptance of Continuous Speculative Decoding (arXiv 2411.11925)."""

import math
from typing import Optional, Tuple

import torch

from .. import _validation as v
from .. import reference
from ._dispatch import run


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
    backend: str = "auto",
    validate: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accept or resample continuous draft tokens of a diffusion-head AR model (CSpD, arXiv 2411.11925).

    Semantics (docs/ALGORITHMS.md §3.6; independent per token, no first-rejection truncation): with the final
    denoising step's diagonal Gaussians q0 = N(mu_q, sigma_q^2) (draft) and p0 = N(mu_p, sigma_p^2) (target),
    the trajectory normaliser ``log c = sum_d (s_q - s_p)`` and ``tau = inner_temperature``,
    ``log rho = sum_d [-((x - mu_p) / (tau sigma_p))^2 / 2 + ((x - mu_q) / (tau sigma_q))^2 / 2
    + log sigma_q - log sigma_p] + log c`` and x is *accepted* iff ``log u_accept < log rho``. A rejected
    token tries ``y_t = mu_p + sigma_p * Phi^-1(u_prop[:, t])`` for t = 1..K and keeps the first with
    ``u_ar[:, t] < 1 - q0(y_t) / (c p0(y_t))``; if none passes it keeps y_K and sets ``fallback``.
    With c = 1 and tau = 1 the output follows p0 except on fallback, whose probability is (1 - TV(p0, q0))^K.

    Parameters
    ----------
    x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p : ``(num_tokens, dim)`` float32
        Draft tokens, final-step means/stds (stds > 0) and per-dim sums of log sigma over the earlier
        denoising steps (only ``sum_d (s_q - s_p)`` is used).
    u_accept : ``(num_tokens,)``; u_prop : ``(num_tokens, max_tries, dim)``; u_ar : ``(num_tokens, max_tries)``
        float32 uniforms in [0, 1], 1.0 included (proposal uniforms are clamped to [2^-24, 1 - 2^-24]; the tests
        are strict, so ``u_accept = 1`` accepts only when rho > 1 and ``u_ar = 1`` never takes a try).
    inner_temperature : float > 0 (1.0 is the paper's form; the released code uses 42); a bool is rejected.
    backend : {"auto", "reference", "cpu", "triton", "cuda"}
    validate : None (default), True or False
        Always: shapes, dtypes, devices and ``inner_temperature`` (every index the kernels use is structural, so
        no value can make them read out of bounds). Every backend reports a token it cannot verify instead of
        computing on it (docs/ALGORITHMS.md §3.8): code 5 for ``u_accept[i]`` outside [0, 1] or NaN, code 6 for a
        NaN / inf ``x, mu_q, mu_p, s_q, s_p`` entry or a sigma that is not finite and > 0 in its row (both checked
        first), code 5 for a bad ``u_prop[i, t]`` / ``u_ar[i, t]`` of a try it computes; such a token comes back
        with NaN tokens and ``accepted = fallback = False``.

        - ``None``: then a ValueError naming the arguments and the first bad token (CPU: one check over the n
          codes; CUDA and ``torch.compile``: an asynchronous device assertion, no host synchronisation).
        - ``True``: additionally, before the kernel, every input finite, stds > 0 and every uniform in [0, 1]
          (one host synchronisation; under ``torch.compile`` device assertions).
        - ``False``: nothing raises on values; bad tokens come back as above.

    Returns
    -------
    tokens : ``(num_tokens, dim)`` float32; accepted, fallback : ``(num_tokens,)`` bool.

    Raises
    ------
    ValueError
        Shapes, dtypes, devices, a temperature that is not a number > 0; a bad token (see ``validate``); with
        ``validate=True`` NaN/inf inputs anywhere, non-positive stds, uniforms outside [0, 1].

    Examples
    --------
    >>> z = torch.zeros(1, 2); one = torch.ones(1, 2)
    >>> tokens, acc, fb = cspd_verify(z, z, one, z, one, z, z, torch.tensor([0.5]), torch.full((1, 3, 2), 0.5),
    ...                               torch.full((1, 3), 0.5))
    >>> acc.tolist(), tokens.tolist()
    ([True], [[0.0, 0.0]])
    """
    validate = v.validate_level(validate)
    v.cspd_shapes(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar)
    if (not isinstance(inner_temperature, (int, float)) or isinstance(inner_temperature, bool)
            or not 0 < inner_temperature < math.inf):
        raise ValueError(f"inner_temperature must be a finite number > 0, got {inner_temperature!r}")
    if validate:
        checks = v.new_checks()
        for name, t in (("x", x), ("mu_q", mu_q), ("mu_p", mu_p), ("s_q", s_q), ("s_p", s_p)):
            checks.add(torch.isfinite(t), f"{name} contains NaN or inf")
        for name, t in (("sigma_q", sigma_q), ("sigma_p", sigma_p)):
            checks.add(torch.isfinite(t) & (t > 0), f"{name} must be finite and > 0")
        for name, t in (("u_accept", u_accept), ("u_prop", u_prop), ("u_ar", u_ar)):
            checks.uniforms(t, name)
        checks.run()
    args = (x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar)
    tokens, accepted, fallback, status = run(
        "cspd_verify",
        backend,
        x.device,
        lambda: reference.cspd_verify(*args, inner_temperature=float(inner_temperature)),
        args + (float(inner_temperature),),
    )
    if validate is not False:
        v.raise_on_bad_rows("cspd_verify", status, validate)
    return tokens, accepted, fallback
