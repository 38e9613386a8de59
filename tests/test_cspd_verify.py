"""cspd_verify: the analytic log-density ratio, parity with the reference, and distribution properties."""

import math

import pytest
import torch
from scipy import stats

import specdec_kernels as sk

from conftest import device_for


def _case(n=256, dim=4, seed=0, tries=8, c_one=True):
    gen = torch.Generator().manual_seed(seed)
    mu_p = torch.randn(n, dim, generator=gen) * 0.5
    mu_q = mu_p + torch.randn(n, dim, generator=gen) * 0.5
    sigma_p = torch.rand(n, dim, generator=gen) + 0.5
    sigma_q = torch.rand(n, dim, generator=gen) + 0.5
    x = mu_q + sigma_q * torch.randn(n, dim, generator=gen)
    s_q = torch.zeros(n, dim) if c_one else torch.randn(n, dim, generator=gen) * 0.1
    s_p = torch.zeros(n, dim)
    return dict(x=x, mu_q=mu_q, sigma_q=sigma_q, mu_p=mu_p, sigma_p=sigma_p, s_q=s_q, s_p=s_p,
                u_accept=torch.rand(n, generator=gen), u_prop=torch.rand(n, tries, dim, generator=gen),
                u_ar=torch.rand(n, tries, generator=gen))


@pytest.mark.parametrize("c_one", [True, False])
@pytest.mark.parametrize("tau", [1.0, 42.0])
def test_parity(backend, c_one, tau):
    device = device_for(backend)
    case = _case(c_one=c_one)
    got = sk.cspd_verify(**{k: v.to(device) for k, v in case.items()}, inner_temperature=tau, backend=backend)
    want = sk.cspd_verify(**case, inner_temperature=tau, backend="reference")
    assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[2].cpu(), want[2])
    torch.testing.assert_close(got[0].cpu(), want[0], atol=1e-5, rtol=1e-5)


def test_acceptance_matches_analytic_ratio():
    """Accepted iff u < min(1, rho) with rho = p0(x) / q0(x) * c (tau = 1)."""
    case = _case(n=2000, c_one=False)
    _, accepted, _ = sk.cspd_verify(**case)
    normal = torch.distributions.Normal
    log_rho = (normal(case["mu_p"].double(), case["sigma_p"].double()).log_prob(case["x"].double())
               - normal(case["mu_q"].double(), case["sigma_q"].double()).log_prob(case["x"].double())).sum(-1)
    log_rho += (case["s_q"] - case["s_p"]).double().sum(-1)
    assert torch.equal(accepted, torch.log(case["u_accept"].double()) < log_rho)


def test_output_follows_target_in_1d_and_fallback_rate():
    """c = 1, tau = 1, x ~ q0: outputs follow p0 (KS test) apart from fallbacks, whose rate is (1 - TV)^K."""
    n, tries = 100_000, 3
    gen = torch.Generator().manual_seed(3)
    mu_p, sigma_p, mu_q, sigma_q = 0.3, 1.0, -0.5, 1.4
    full = lambda v: torch.full((n, 1), v)  # noqa: E731
    x = mu_q + sigma_q * torch.randn(n, 1, generator=gen)
    tokens, accepted, fallback = sk.cspd_verify(
        x, full(mu_q), full(sigma_q), full(mu_p), full(sigma_p), full(0.0), full(0.0), torch.rand(n, generator=gen),
        torch.rand(n, tries, 1, generator=gen), torch.rand(n, tries, generator=gen))
    # TV between the two Gaussians by numerical integration
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    pdf = lambda m, s: torch.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    tv = 0.5 * torch.trapezoid((pdf(mu_p, sigma_p) - pdf(mu_q, sigma_q)).abs(), grid).item()
    rejected = (~accepted).sum().item()
    expected_rate = (1 - tv) ** tries
    observed_rate = fallback.sum().item() / rejected
    assert abs(observed_rate - expected_rate) < 6 * math.sqrt(expected_rate * (1 - expected_rate) / rejected)
    good = tokens[~fallback, 0].double().numpy()
    # Without fallbacks the output is a mixture tilted slightly away from p0; with K large it would be exact.
    # Check exactness on the accepted-or-resampled-without-fallback part against its closed form instead:
    # with many tries the fallback share vanishes, so run again with K = 40 and compare to p0 directly.
    tokens, accepted, fallback = sk.cspd_verify(
        x, full(mu_q), full(sigma_q), full(mu_p), full(sigma_p), full(0.0), full(0.0), torch.rand(n, generator=gen),
        torch.rand(n, 40, 1, generator=gen), torch.rand(n, 40, generator=gen))
    assert fallback.sum().item() <= 2
    ks = stats.kstest(tokens[:, 0].double().numpy(), stats.norm(loc=mu_p, scale=sigma_p).cdf)
    assert ks.pvalue > 1e-6
    assert good.size > 0


def test_fallback_returns_last_proposal():
    case = _case(n=50, tries=2)
    # q0 == p0 and c = exp(-200): rho = c rejects x, and 1 - q0 / (c p0) < 0 rejects every proposal.
    case["mu_q"], case["sigma_q"] = case["mu_p"].clone(), case["sigma_p"].clone()
    case["s_q"] = torch.full_like(case["s_q"], -50.0)
    tokens, accepted, fallback = sk.cspd_verify(**case)
    assert (~accepted).all() and fallback.all()
    u = case["u_prop"][:, -1].double().clamp(2**-24, 1 - 2**-24)
    expected = case["mu_p"].double() + case["sigma_p"].double() * math.sqrt(2) * torch.erfinv(2 * u - 1)
    torch.testing.assert_close(tokens.double(), expected, atol=1e-5, rtol=1e-5)
