"""Continuous testbed and CSpD loop: acceptance = Gaussian density ratio, distribution preservation on Gaussian
toys (c = 1, tau = 1), draft == target accepts everything, ragged batches, and alignment on the shipped models."""

import math

import pytest
import torch
from scipy import stats

import specdec_kernels as sk
from specdec.continuous.diffusion import Schedule, denoise
from specdec.continuous.model import ContinuousAR, ContinuousConfig
from specdec.continuous.sample import (LANE_TRAJECTORY, generate_ar, generate_cspd, position_normals,
                                       trajectory_noise)
from specdec.decoding import derive_row_keys

TINY = ContinuousConfig(grid_size=4, dim=32, n_layer=1, n_head=4, head_width=32, head_depth=1, num_steps=8)
PREFILL = 0.25  # 4 of the tiny models' 16 tokens


def _tiny_model(seed: int, base=None, jitter: float = 0.05) -> ContinuousAR:
    """A random tiny model (non-zero head outputs); with ``base``, a copy of it with weights moved by ``jitter``."""
    torch.manual_seed(seed)
    model = ContinuousAR(TINY)
    if base is not None:
        model.load_state_dict(base.state_dict())
    for p in model.parameters():
        p.data += jitter * torch.randn_like(p)
    return model.eval()


class GaussianToy:
    """Exact epsilon predictor of data ``N(mean, std^2)`` (per dim): the DDPM sampler then draws Gaussians."""

    def __init__(self, mean, std, num_steps: int):
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        self.schedule = Schedule(num_steps)

    def __call__(self, x_t, t, z):
        abar = self.schedule.sqrt_abar[t - 1, None] ** 2
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * self.mean) / (abar * self.std**2 + 1 - abar)


def test_acceptance_ratio_is_the_gaussian_density_ratio():
    """The loop's inputs to the op (final-step Gaussians of aligned draft / target trajectories) give
    accept iff u < p0(x) / q0(x) * c with c = exp(sum(S_q - S_p)) = 1 under the shared fixed-variance schedule."""
    target = _tiny_model(0)
    draft = _tiny_model(1, base=target, jitter=1e-4)
    n = 3000
    gen = torch.Generator().manual_seed(0)
    z_p = torch.randn(n, TINY.dim, generator=gen)
    z_q = z_p + 0.01 * torch.randn(n, TINY.dim, generator=gen)
    noise = torch.randn(n, TINY.num_steps + 1, TINY.token_dim, generator=gen)
    q = denoise(draft.head, z_q, noise)
    p = denoise(target.head, z_p, noise)
    torch.testing.assert_close(q.x0, q.mu0 + q.sigma0 * noise[:, -1])  # the draft token is its final-step sample
    assert torch.equal(q.log_sigma_sum, p.log_sigma_sum)  # same sigma_t at every step: normaliser c = 1
    u = torch.rand(n, generator=gen)
    _, accepted, _ = sk.cspd_verify(q.x0, q.mu0, q.sigma0, p.mu0, p.sigma0, q.log_sigma_sum, p.log_sigma_sum, u,
                                    torch.rand(n, 4, TINY.token_dim, generator=gen), torch.rand(n, 4, generator=gen))
    normal = torch.distributions.Normal
    log_ratio = (normal(p.mu0.double(), p.sigma0.double()).log_prob(q.x0.double())
                 - normal(q.mu0.double(), q.sigma0.double()).log_prob(q.x0.double())).sum(-1)
    want = torch.log(u.double()) < log_ratio
    assert 0 < int(want.sum()) < n
    assert torch.equal(accepted, want)


@pytest.mark.parametrize("align", [True, False])
def test_accept_residual_reproduces_target_on_gaussian_toys(align):
    """2-d Gaussian toys, c = 1, tau = 1: drafts from the draft's trajectories, verified against the target's
    trajectory on the same (aligned) or independent noise, are distributed as the target's own samples."""
    T, D, n = 10, 2, 40_000
    target = GaussianToy([0.3, -0.2], [1.0, 0.7], T)
    draft = GaussianToy([-0.2, 0.1], [1.3, 0.6], T)
    gen = torch.Generator().manual_seed(1)
    z = torch.zeros(n, 1)
    noise_p = torch.randn(n, T + 1, D, generator=gen)
    noise_q = noise_p if align else torch.randn(n, T + 1, D, generator=gen)
    q, p = denoise(draft, z, noise_q), denoise(target, z, noise_p)
    tokens, accepted, fallback = sk.cspd_verify(
        q.x0, q.mu0, q.sigma0, p.mu0, p.sigma0, q.log_sigma_sum, p.log_sigma_sum, torch.rand(n, generator=gen),
        torch.rand(n, 100, D, generator=gen), torch.rand(n, 100, generator=gen))
    assert 0.02 < accepted.double().mean() < 0.98 and int(fallback.sum()) == 0
    reference = denoise(target, z, torch.randn(n, T + 1, D, generator=gen)).x0  # the target sampling alone
    for d in range(D):
        assert stats.ks_2samp(tokens[:, d].numpy(), reference[:, d].numpy()).pvalue > 1e-3
    # and not the draft's distribution (the test has power)
    assert stats.ks_2samp(q.x0[:, 0].numpy(), reference[:, 0].numpy()).pvalue < 1e-6
    corr = lambda x: torch.corrcoef(x.T.double())[0, 1].item()  # noqa: E731
    assert abs(corr(tokens) - corr(reference)) < 4 * 2 / math.sqrt(n)


@pytest.mark.parametrize("causal", [True, False])
def test_draft_equal_to_target_accepts_everything(causal):
    target = _tiny_model(0)
    classes = torch.tensor([0, 3, 7])
    keys = derive_row_keys(3, 0)
    res = generate_cspd(target, target, classes, keys, gamma=4, prefill_ratio=PREFILL, causal=causal)
    assert res.stats["drafts_accepted"] == res.stats["drafts_tested"] > 0
    prefill, N = 4, target.num_tokens
    per_verify = 5 if causal else 4  # gamma drafts + the bonus token (causal) / gamma commits (released rule)
    assert torch.equal(res.stats["target_forwards"], torch.full((3,), prefill + math.ceil((N - prefill) / per_verify)))
    ar = generate_ar(target, classes, keys)  # same per-position noise: the same tokens up to float rounding
    torch.testing.assert_close(res.tokens, ar.tokens, atol=2e-3, rtol=0)


def test_batched_ragged_rows_equal_rows_alone():
    target = _tiny_model(0)
    draft = _tiny_model(1, base=target, jitter=1e-4)
    classes = torch.tensor([1, 4, 9, 2])
    keys = derive_row_keys(4, 5)
    both = generate_cspd(target, draft, classes, keys, prefill_ratio=PREFILL)
    assert 0 < both.stats["drafts_accepted"] < both.stats["drafts_tested"]  # partial acceptance: ragged rows
    assert len(set(both.stats["target_forwards"].tolist())) > 1
    for i in range(4):
        alone = generate_cspd(target, draft, classes[i : i + 1], keys[i : i + 1], prefill_ratio=PREFILL)
        assert alone.stats["target_forwards"][0] == both.stats["target_forwards"][i]
        torch.testing.assert_close(alone.tokens[0], both.tokens[i], atol=2e-3, rtol=0)


def test_noise_is_a_function_of_row_key_and_position():
    keys = derive_row_keys(2, 0)
    a = position_normals(keys, torch.tensor([[5, 6], [5, 6]]), LANE_TRAJECTORY, 16)
    b = position_normals(keys.flip(0), torch.tensor([[6], [6]]), LANE_TRAJECTORY, 16)
    assert torch.equal(a[0, 1], b[1, 0]) and torch.equal(a[1, 1], b[0, 0])
    assert not torch.equal(a[0, 0], a[0, 1]) and not torch.equal(a[0, 0], a[1, 0])
    model = _tiny_model(0)
    assert trajectory_noise(model, keys, torch.tensor([[0], [1]]), LANE_TRAJECTORY).shape == (2, 9, 8)


@pytest.mark.parametrize("kwargs, name", [({"gamma": 0}, "gamma"), ({"prefill_ratio": 1.5}, "prefill_ratio"),
                                          ({"max_tries": 0}, "max_tries")])
def test_bad_options_raise(kwargs, name):
    model = _tiny_model(0)
    with pytest.raises(ValueError, match=name):
        generate_cspd(model, model, torch.tensor([0]), derive_row_keys(1, 0), **kwargs)


def _shipped_or_skip():
    from specdec.testbed.shipped import WeightsMissingError
    from specdec.continuous.train import DRAFT_NAME, TARGET_NAME, load_continuous

    try:
        return load_continuous(TARGET_NAME), load_continuous(DRAFT_NAME)
    except WeightsMissingError as e:
        pytest.skip(str(e))


def test_alignment_raises_acceptance_on_the_testbed():
    """Shipped target and draft, teacher-forced on held-out images (CFG 3 as in the demo): with shared noise the
    final-step means are closer and both the expected acceptance 1 - TV(p0, q0) = 2 Phi(-|mu_p - mu_q| / 2 sigma)
    and the op's realised acceptance at least double over independent noise."""
    target, draft = _shipped_or_skip()
    from specdec.testbed.data import dataset_available, load_fashion_mnist
    from specdec.testbed.shipped import load_model

    if not dataset_available():
        pytest.skip("Fashion-MNIST not installed")
    images, labels = load_fashion_mnist("test")
    with torch.no_grad():
        tokens = target.from_latents(load_model("vq").encode_latents(images[:32]))
        null = torch.full_like(labels[:32], target.num_classes)
        z = {name: [m.forward_train(c, tokens).flatten(0, 1) for c in (labels[:32], null)]
             for name, m in (("p", target), ("q", draft))}
    gen = torch.Generator().manual_seed(0)
    shape = (len(z["p"][0]), target.config.num_steps + 1, target.token_dim)
    noise = torch.randn(shape, generator=gen)
    p = denoise(target.head, z["p"][0], noise, z["p"][1], 3.0)
    expected, realised, distance = {}, {}, {}
    for align in (True, False):
        q = denoise(draft.head, z["q"][0], noise if align else torch.randn(shape, generator=gen), z["q"][1], 3.0)
        gap = (q.mu0 - p.mu0).norm(dim=-1)
        distance[align] = gap.median().item()
        expected[align] = (2 * torch.distributions.Normal(0.0, 1.0).cdf(-gap / (2 * p.sigma0[:, 0]))).mean().item()
        n = len(gap)
        _, accepted, _ = sk.cspd_verify(q.x0, q.mu0, q.sigma0, p.mu0, p.sigma0, q.log_sigma_sum, p.log_sigma_sum,
                                        torch.rand(n, generator=gen), torch.rand(n, 8, 8, generator=gen),
                                        torch.rand(n, 8, generator=gen))
        realised[align] = accepted.double().mean().item()
    assert distance[True] < 0.75 * distance[False], distance
    assert expected[True] >= 2 * expected[False], expected
    assert realised[True] >= 2 * realised[False] and realised[True] > 0, realised


def test_schedule_variances():
    from specdec.continuous.diffusion import cosine_betas

    betas = cosine_betas(25)
    abar = torch.cumprod(1 - betas, 0)
    posterior = betas[1:] * (1 - abar[:-1]) / (1 - abar[1:])  # beta~_t for t >= 2
    small, large = Schedule(25, "small"), Schedule(25, "large")
    torch.testing.assert_close(small.sigmas[1:].double(), posterior.sqrt(), rtol=1e-6, atol=0)
    assert small.sigmas[0] == small.sigmas[1] > 0  # beta~_1 = 0 is replaced by beta~_2
    torch.testing.assert_close(large.sigmas.double(), betas.sqrt(), rtol=1e-6, atol=0)
    assert Schedule(25, "small", final_std=0.3).sigmas[0].item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="variance"):
        Schedule(25, "learned")
