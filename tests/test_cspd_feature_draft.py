"""Feature-conditioned CSpD draft (continuous/feature_draft.py): config checks, shapes, export / load, the cached
inference path against the training path, a tiny distillation run whose loss falls, and exactness of CSpD with it
(statistical, on tiny models whose final-step std makes acceptance moderate so both branches run)."""

import functools
from pathlib import Path

import pytest
import torch
from scipy import stats

from specdec.continuous.feature_draft import (FeatureDraft, FeatureDraftConfig, check_compatible, distill_loss,
                                              heldout_distance, load_feature_draft)
from specdec.continuous.diffusion import Schedule
from specdec.continuous.model import ContinuousAR, ContinuousConfig
from specdec.continuous.sample import generate_ar, generate_cspd
from specdec.decoding import derive_row_keys
from specdec.testbed import shipped

# final_std 0.6: a lenient exact test, so a briefly trained draft is accepted often but not always.
TINY = ContinuousConfig(grid_size=4, dim=32, n_layer=2, n_head=4, head_width=32, head_depth=1, num_steps=8,
                        final_std=0.6)
DRAFT = FeatureDraftConfig(dim=32, n_layer=1, n_head=4, token_dim=8, grid_size=4)


class LinearGaussianHead(torch.nn.Module):
    """Exact epsilon predictor of tokens ``N(W z, std^2)`` (per dim): a tiny head whose reverse steps stay sane
    (a random MLP head's first step, divided by sqrt(alpha_T) = 31, blows the tokens up)."""

    def __init__(self, cond_dim: int, token_dim: int, num_steps: int, std: float = 0.7):
        super().__init__()
        self.schedule = Schedule(num_steps, final_std=TINY.final_std)
        w = torch.randn(token_dim, cond_dim, generator=torch.Generator().manual_seed(7)) / cond_dim**0.5
        self.register_buffer("w", w)
        self.std = std

    def forward(self, x_t, t, z):
        abar = self.schedule.sqrt_abar[t - 1, None] ** 2
        mean = 2.0 * z @ self.w.T
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * mean) / (abar * self.std**2 + 1 - abar)


@functools.lru_cache(maxsize=None)
def _tiny_target(seed: int = 0) -> ContinuousAR:
    """A random tiny trunk (weights jittered so the conditions depend on the context) with a
    :class:`LinearGaussianHead`."""
    torch.manual_seed(seed)
    model = ContinuousAR(TINY)
    for p in model.parameters():
        p.data += 0.05 * torch.randn_like(p)
    model.head = LinearGaussianHead(TINY.dim, TINY.token_dim, TINY.num_steps)
    return model.eval().requires_grad_(False)


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, TINY.num_tokens, TINY.token_dim, generator=torch.Generator().manual_seed(seed))


def _train(draft: FeatureDraft, steps: int, seed: int = 0):
    """A few Adam steps of the distillation loss on one fixed batch; returns the losses."""
    opt = torch.optim.Adam(draft.parameters(), lr=3e-3)
    tokens, cls = _tokens(16, seed), torch.arange(16) % TINY.num_classes
    losses, logs = [], {}
    for step in range(steps):
        torch.manual_seed(step)  # the steps / noise of the epsilon term
        loss, logs = distill_loss(draft, cls, tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, logs


@pytest.fixture(scope="module")
def trained():
    """(target, feature draft distilled for 60 steps on the tiny target)."""
    target = _tiny_target()
    torch.manual_seed(1)
    draft = FeatureDraft(DRAFT, target)
    _train(draft, 60)
    return target, draft.eval().requires_grad_(False)


def test_config_must_match_the_target():
    target = _tiny_target()
    with pytest.raises(ValueError, match="does not match"):
        FeatureDraft(FeatureDraftConfig(dim=48, n_head=4, token_dim=8, grid_size=4), target)
    with pytest.raises(ValueError, match="does not match"):
        check_compatible(FeatureDraftConfig(dim=32, token_dim=4, grid_size=4), target)
    with pytest.raises(ValueError, match="multiple of 4"):
        FeatureDraft(FeatureDraftConfig(dim=32, n_head=32, token_dim=8, grid_size=4), target)
    with pytest.raises(ValueError, match="n_layer"):
        FeatureDraft(FeatureDraftConfig(dim=32, n_layer=0, token_dim=8, grid_size=4), target)


def test_shapes_and_that_the_target_is_not_owned():
    target = _tiny_target()
    draft = FeatureDraft(DRAFT, target)
    assert not any(k.startswith(("_target", "head", "target")) for k in draft.state_dict())
    assert draft.head is target.head
    tokens = _tokens(3, 0)
    feats = target.forward_train(torch.tensor([1, 2, 3]), tokens, drop_labels=False)
    assert draft.forward_train(tokens, feats).shape == (3, TINY.num_tokens - 1, TINY.dim)
    cache = draft.new_cache(3, TINY.num_tokens + 1)
    assert cache.k[0].shape == (3, DRAFT.n_head, TINY.num_tokens + 1, DRAFT.dim // DRAFT.n_head)
    with pytest.raises(ValueError, match="slot 1"):
        draft.forward_slots(tokens, feats, torch.zeros(3, 1, dtype=torch.long), cache)


def test_cached_slots_equal_the_training_pass(trained):
    """Feeding the entries through the KV cache (a window, then one by one, with a re-fed slot) gives the
    causal training pass's predictions."""
    target, draft = trained
    tokens = _tokens(4, 5)
    feats = target.forward_train(torch.tensor([0, 3, 5, 9]), tokens, drop_labels=False)
    want = draft.forward_train(tokens, feats)  # predictions for slots 1 .. T-1
    T = TINY.num_tokens
    cache = draft.new_cache(4, T + 1)
    got = [draft.forward_slots(tokens, feats, torch.arange(1, 6).expand(4, -1), cache)]
    for s in range(5, T):  # slot 5 again (idempotent re-feed), then the rest one at a time
        got.append(draft.forward_slots(tokens, feats, torch.full((4, 1), s), cache)[:, -1:])
    got = torch.cat([got[0], *got[2:]], dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_export_and_load_round_trip(trained, tmp_path: Path):
    target, draft = trained
    shipped.save_weights(draft, "cspd-eagle", "cspd-feature-draft", draft.config.to_dict(), torch.float32,
                         tmp_path)
    loaded = load_feature_draft("cspd-eagle", target, tmp_path)
    assert loaded.config == draft.config and loaded.target is target
    for k, v in draft.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    shipped.save_weights(draft, "other", "continuous", draft.config.to_dict(), torch.float32, tmp_path)
    with pytest.raises(ValueError, match="cspd-feature-draft"):
        load_feature_draft("other", target, tmp_path)


def test_tiny_distillation_run_lowers_the_loss():
    target = _tiny_target()
    torch.manual_seed(1)
    draft = FeatureDraft(DRAFT, target)
    losses, logs = _train(draft, 40)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert set(logs) == {"z_rel_tf", "eps_tf", "z_rel_unroll", "eps_unroll"}


def test_heldout_distance_falls_with_training():
    target = _tiny_target()
    split = {"latents": target.to_latents(_tokens(8, 9)), "labels": torch.arange(8)}
    torch.manual_seed(1)
    draft = FeatureDraft(DRAFT, target)
    before = heldout_distance(draft, split, n=8)
    _train(draft, 60)
    after = heldout_distance(draft, split, n=8)
    assert after["median_mu0_distance_first"] < before["median_mu0_distance_first"]
    assert after["expected_accept_first"] > before["expected_accept_first"]


@pytest.mark.parametrize("kwargs, match", [({"causal": False}, "causal"), ({"prefill_ratio": 0.0}, "pre-filled")])
def test_unsupported_loop_options_raise(trained, kwargs, match):
    target, draft = trained
    with pytest.raises(ValueError, match=match):
        generate_cspd(target, draft, torch.tensor([1]), derive_row_keys(1, 0), **kwargs)


def test_draft_of_another_target_raises(trained):
    _, draft = trained
    with pytest.raises(ValueError, match="another target"):
        generate_cspd(_tiny_target(3), draft, torch.tensor([1]), derive_row_keys(1, 0), prefill_ratio=0.25)


def test_batched_ragged_rows_equal_rows_alone(trained):
    target, draft = trained
    classes, keys = torch.tensor([0, 4, 7]), derive_row_keys(3, 11)
    both = generate_cspd(target, draft, classes, keys, prefill_ratio=0.25, gamma=3)
    assert both.stats["drafts_accepted"] > 0
    for i in range(3):
        alone = generate_cspd(target, draft, classes[i : i + 1], keys[i : i + 1], prefill_ratio=0.25, gamma=3)
        torch.testing.assert_close(alone.tokens[0], both.tokens[i], atol=1e-5, rtol=1e-5)


def test_cspd_with_the_feature_draft_is_distributed_as_the_target():
    """Exactness (tau = 1, causal): CSpD tokens with a briefly distilled feature draft and AR tokens with other row
    keys agree in distribution (two-sample KS per dimension of the last token, of a middle token and of the image
    mean; Bonferroni over the 24 tests) while acceptance is moderate, so both branches of the op run. The draft's
    own tokens (every draft accepted: tau_in 1e4) fail the same test, so it has power."""
    target = _tiny_target()
    torch.manual_seed(1)
    draft = FeatureDraft(DRAFT, target)
    _train(draft, 30)
    draft.eval().requires_grad_(False)
    n = 800
    classes = torch.arange(n) % 3
    options = {"prefill_ratio": 0.25, "cfg_scale": 1.0}
    ar = generate_ar(target, classes, derive_row_keys(n, 1), cfg_scale=1.0).tokens
    spec = generate_cspd(target, draft, classes, derive_row_keys(n, 2), **options)
    own = generate_cspd(target, draft, classes, derive_row_keys(n, 2), inner_temperature=1e4, **options)
    acceptance = spec.stats["drafts_accepted"] / spec.stats["drafts_tested"]
    assert 0.1 < acceptance < 0.9, acceptance
    assert own.stats["drafts_accepted"] == own.stats["drafts_tested"]

    def min_pvalue(tokens):
        feats = torch.cat([tokens[:, -1], tokens[:, 7], tokens.mean(1)], dim=-1)  # (n, 24)
        ref = torch.cat([ar[:, -1], ar[:, 7], ar.mean(1)], dim=-1)
        return min(stats.ks_2samp(feats[:, j].numpy(), ref[:, j].numpy()).pvalue for j in range(feats.shape[1]))

    alpha = 0.01 / 24
    assert min_pvalue(spec.tokens) > alpha
    assert min_pvalue(own.tokens) < alpha


def test_expected_tokens_per_forward():
    from specdec.continuous.frontier import expected_tokens_per_forward

    assert expected_tokens_per_forward(1.0, 1.0, 4) == 5.0
    assert expected_tokens_per_forward(0.0, 1.0, 4) == 1.0
    a = 0.6
    assert abs(expected_tokens_per_forward(a, a, 4) - (1 - a**5) / (1 - a)) < 1e-12
    assert abs(expected_tokens_per_forward(0.5, 0.2, 3) - (1 + 0.5 + 0.1 + 0.02)) < 1e-12


def test_shipped_feature_drafts_are_closer_than_the_trunk_draft():
    """Shipped weights, teacher-forced on 20 held-out images (CFG 3): both feature drafts' final means are closer
    to the target's than the trunk draft's, and closer than the oracle's at 40 % condition noise but not at 1 %."""
    from specdec.continuous.frontier import draft_distances
    from specdec.continuous.train import DRAFT_NAME, FEATURE_DRAFTS, TARGET_NAME, load_continuous
    from specdec.testbed.data import dataset_available, load_fashion_mnist
    from specdec.testbed.shipped import WeightsMissingError, load_model

    try:
        target = load_continuous(TARGET_NAME)
        drafts = {DRAFT_NAME: load_continuous(DRAFT_NAME),
                  **{name: load_feature_draft(name, target) for name in FEATURE_DRAFTS}}
    except WeightsMissingError as e:
        pytest.skip(str(e))
    if not dataset_available():
        pytest.skip("Fashion-MNIST not installed")
    images, labels = load_fashion_mnist("test")
    with torch.no_grad():
        latents = load_model("vq").encode_latents(images[:20])
    rows = {r["draft"]: r for r in draft_distances(target, drafts, latents, labels[:20])}
    for name in FEATURE_DRAFTS:
        assert rows[name]["median_distance"] < rows[DRAFT_NAME]["median_distance"], (name, rows)
        assert rows[name]["acceptance_first"] > rows[DRAFT_NAME]["acceptance_first"], (name, rows)
        assert rows["oracle: target z + 0.01 noise"]["median_distance"] < rows[name]["median_distance"]
        assert rows[name]["median_distance"] < rows["oracle: target z + 0.4 noise"]["median_distance"]
