"""(c) Relaxed methods: degenerate settings reproduce the exact methods token for token, and acceptance grows
with the relaxation (LANTERN delta, GSD window)."""

import pytest
import torch

from specdec.decoding import SamplingConfig, derive_row_keys, generate, methods
from specdec.decoding.defaults import gsd_rank_window, lantern_k
from specdec.decoding.toy import ToyARModel, ToyDraftHead

TARGET = ToyARModel(vocab_size=16, num_tokens=8, seed=2)
HEAD = ToyDraftHead(TARGET, seed=3)
SAMPLING = SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=12)
CLASSES = torch.arange(3).repeat(40)
KEYS = derive_row_keys(CLASSES.shape[0], seed=99)
TREE = dict(total_tokens=10, depth=3, top_k=3)
CHOICES = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]


def _run(method, classes=CLASSES, keys=KEYS):
    return generate(TARGET, classes, method, sampling=SAMPLING, row_keys=keys)


def test_lantern_delta_zero_and_lambda_one_equal_eagle2():
    exact = _run(methods.Eagle2(HEAD, **TREE))
    for kwargs in ({"delta": 0.0}, {"lam": 1.0}):
        relaxed = _run(methods.Lantern(HEAD, TARGET.codebook, k=5, **kwargs, **TREE))
        assert torch.equal(relaxed.tokens, exact.tokens), kwargs
        assert torch.equal(relaxed.metrics.accept_lens, exact.metrics.accept_lens)


def test_lantern_pp_lambda_one_equals_exact_static_tree():
    exact = _run(methods.StaticTreeMethod(HEAD, choices=CHOICES))
    relaxed = _run(methods.LanternPP(HEAD, TARGET.codebook, lam=1.0, k=5, choices=CHOICES))
    assert torch.equal(relaxed.tokens, exact.tokens)


@pytest.mark.parametrize("kwargs", [{"rank_window": (0, 0)}, {"p_thr": 0.0}, {"d_thr": 0.0}])
def test_gsd_degenerate_settings_equal_sjd(kwargs):
    exact = _run(methods.SJD(window=6))
    relaxed = _run(methods.GSD(TARGET.codebook, window=6, **kwargs))
    assert torch.equal(relaxed.tokens, exact.tokens), kwargs


def test_lantern_acceptance_grows_with_delta():
    classes = torch.arange(3).repeat(300)
    keys = derive_row_keys(classes.shape[0], seed=5)
    means = [_run(methods.Lantern(HEAD, TARGET.codebook, delta=d, k=5, **TREE), classes, keys).metrics.mean_accept_len
             for d in (0.0, 0.2, 0.5)]
    assert means[0] < means[1] < means[2], means


def test_lantern_pp_acceptance_grows_with_lambda():
    classes = torch.arange(3).repeat(200)
    keys = derive_row_keys(classes.shape[0], seed=6)
    means = [_run(methods.LanternPP(HEAD, TARGET.codebook, lam=lam, k=5, choices=CHOICES), classes, keys)
             .metrics.mean_accept_len for lam in (1.0, 3.0, 10.0)]
    assert means[0] < means[1] < means[2], means


def test_gsd_accepts_at_least_sjd_on_fresh_drafts_and_more_overall():
    """Step 1 verifies fresh (one-hot) inits with identical p and uniforms, where GSD's accept set contains
    exact SD's (docs/ALGORITHMS.md §5.3): per-row accept_len can only grow. Later steps diverge, so compare means."""
    classes = torch.arange(3).repeat(200)
    keys = derive_row_keys(classes.shape[0], seed=8)
    exact = _run(methods.SJD(window=6), classes, keys).metrics
    small = _run(methods.GSD(TARGET.codebook, window=6, rank_window=(1, 1), d_thr=2.0), classes, keys).metrics
    wide = _run(methods.GSD(TARGET.codebook, window=6, rank_window=(4, 4), d_thr=2.0), classes, keys).metrics
    assert bool((small.accept_lens[:, 0] >= exact.accept_lens[:, 0]).all())
    assert bool((wide.accept_lens[:, 0] >= small.accept_lens[:, 0]).all())
    assert exact.mean_accept_len < small.mean_accept_len < wide.mean_accept_len


def test_scaled_defaults():
    assert gsd_rank_window(1024) == (4, 3) and gsd_rank_window(2000) == (7, 6)
    assert lantern_k(1024) == 64 and lantern_k(16384) == 1024 and lantern_k(8) == 1
