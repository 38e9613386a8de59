"""(a) Batched, ragged generation equals per-row generation with the same row keys, for every method;
finished rows idle; metrics are per row."""

import pytest
import torch

from specdec.decoding import SamplingConfig, derive_row_keys, generate, methods
from specdec.decoding.toy import ToyARModel, ToyDraftHead

TARGET = ToyARModel(vocab_size=8, num_tokens=7, seed=0)
DRAFT = ToyARModel(vocab_size=8, num_tokens=7, seed=5)
HEAD = ToyDraftHead(TARGET)

FACTORIES = {
    "ar": lambda: methods.AR(),
    "sd": lambda: methods.SD(DRAFT, gamma=3),
    "sjd": lambda: methods.SJD(window=5),
    "sjd_repeat": lambda: methods.SJD(window=5, init="repeat_left"),
    "gsd": lambda: methods.GSD(TARGET.codebook, rank_window=(2, 2), p_thr=0.3, d_thr=1.5, window=5),
    "eagle2": lambda: methods.Eagle2(HEAD, total_tokens=8, depth=2, top_k=3),
    "lantern": lambda: methods.Lantern(HEAD, TARGET.codebook, delta=0.3, k=3, total_tokens=8, depth=2, top_k=3),
    "static": lambda: methods.StaticTreeMethod(HEAD, choices=[(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]),
    "lantern++": lambda: methods.LanternPP(HEAD, TARGET.codebook, lam=3.0, k=3),
}


@pytest.mark.parametrize("cfg_scale", [2.0, None])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_batched_equals_per_row(name, cfg_scale):
    sampling = SamplingConfig(cfg_scale=cfg_scale, temperature=1.0, top_k=6)
    classes = torch.tensor([0, 1, 2, 1, 0, 2])
    keys = derive_row_keys(classes.shape[0], seed=123)
    batched = generate(TARGET, classes, FACTORIES[name](), sampling=sampling, row_keys=keys, validate=True)
    steps = batched.metrics.row_steps
    for b in range(classes.shape[0]):
        alone = generate(TARGET, classes[b : b + 1], FACTORIES[name](), sampling=sampling, row_keys=keys[b : b + 1])
        assert torch.equal(alone.tokens[0], batched.tokens[b]), (name, b)
        n = int(steps[b])
        assert torch.equal(alone.metrics.accept_lens[0, :n], batched.metrics.accept_lens[b, :n])
    assert bool((batched.tokens >= 0).all())
    if name not in ("ar",):
        assert steps.unique().numel() > 1, "rows should finish at different steps (ragged)"
    assert int(batched.metrics.target_forwards) == 1 + int(steps.max())


def test_metrics_for_ar():
    res = generate(TARGET, torch.tensor([0, 1]), methods.AR(), sampling=SamplingConfig(cfg_scale=2.0))
    m = res.metrics
    assert m.target_forwards == TARGET.num_tokens and m.draft_forwards == 0
    assert m.row_steps.tolist() == [TARGET.num_tokens - 1] * 2
    assert m.tokens_per_step.tolist() == [1.0, 1.0] and m.mean_accept_len == 0.0
    assert set(m.summary()) == {"target_forwards", "draft_forwards", "tokens_per_step", "mean_accept_len",
                                "wall_time_s"}


def test_accepted_tokens_advance_rows_independently():
    """No truncation to the worst row: a row's tokens per step is its own."""
    res = generate(TARGET, torch.arange(3).repeat(20), methods.SJD(window=5), sampling=SamplingConfig(cfg_scale=2.0))
    tps = res.metrics.tokens_per_step
    assert float(tps.max()) > float(tps.min())
    assert int(res.metrics.accept_lens.max()) >= 2
