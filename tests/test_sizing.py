"""Cost-aware sizing (specdec.decoding.sizing): the cost model, the acceptance statistics, the argmax, the cached
calibration, and that auto-sized methods are the fixed-size methods at the sizes they chose (so exact methods stay
exact and runs are reproducible)."""

import json

import pytest
import torch

from specdec.decoding import SamplingConfig, generate, make_method, methods
from specdec.decoding import sizing
from specdec.decoding.rng import _mul32
from specdec.decoding.sizing import (AutoSizer, Calibration, ChainStats, Choice, CostCurve, DynamicTreeStats,
                                     StaticTreeStats, best, enable_auto_size)
from specdec.decoding.toy import ToyARModel, ToyDraftHead

TARGET = ToyARModel(vocab_size=8, num_tokens=9, seed=0)
DRAFT = ToyARModel(vocab_size=8, num_tokens=9, seed=5)
HEAD = ToyDraftHead(TARGET)
SAMPLING = SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=6)
CLASSES = torch.tensor([0, 1, 2, 1, 0, 2])

FIXED = {
    "sjd": lambda: methods.SJD(window=6),
    "gsd": lambda: methods.GSD(TARGET.codebook, rank_window=(2, 2), p_thr=0.3, d_thr=1.5, window=6),
    "sd": lambda: methods.SD(DRAFT, gamma=4),
    "eagle2": lambda: methods.Eagle2(HEAD, total_tokens=10, depth=3, top_k=3),
    "lantern": lambda: methods.Lantern(HEAD, TARGET.codebook, delta=0.3, k=3, total_tokens=10, depth=3, top_k=3),
    "static": lambda: methods.StaticTreeMethod(HEAD),
    "lantern++": lambda: methods.LanternPP(HEAD, TARGET.codebook, lam=3.0, k=3),
}


def _calibration(fixed: float, per_token: float, rows=(2, 12)) -> Calibration:
    """Synthetic linear costs: ``fixed + per_token * T`` seconds for the target, a fiftieth of that for the draft
    model and the head (the toy's random head accepts little, so drafting must be cheap to pay)."""
    def curve(scale):
        return CostCurve((1, 128), (scale * (fixed + per_token), scale * (fixed + 128 * per_token)))

    scales = {"target": 1.0, "draft": 0.02, "head": 0.02}
    return Calibration({(role, r): curve(scale) for role, scale in scales.items() for r in rows})


CPU_LIKE = _calibration(1.0, 0.25)  # a feed costs much more with more tokens
GPU_LIKE = _calibration(1.0, 0.002)  # a few dozen tokens cost about as much as one


def test_cost_curve_interpolates_and_extrapolates():
    c = CostCurve((1, 4, 8), (1.0, 2.5, 3.0))
    assert c(1) == 1.0 and c(0.5) == 1.0 and c(2) == pytest.approx(1.5) and c(6) == pytest.approx(2.75)
    assert c(16) == pytest.approx(4.0)  # along the last segment
    assert CostCurve.from_json(json.loads(json.dumps(c.to_json()))) == c
    with pytest.raises(ValueError):
        CostCurve((4, 1), (1.0, 2.0))
    with pytest.raises(KeyError):
        Calibration().cost("target", 2, 3)


def test_best_is_the_argmax_of_tokens_per_second_with_ties_to_the_smaller():
    choices = [Choice(1, 2.0, 1.0), Choice(2, 3.0, 1.5), Choice(3, 3.3, 1.5), Choice(4, 3.3, 1.5)]
    assert best(choices).size == 3
    assert best([Choice(1, 2.0, 1.0), Choice(2, 4.0, 2.0)]).size == 1


def test_chain_stats_min_rule_and_geometric_extension():
    stats = ChainStats()
    active = torch.tensor([True, True, True, False])
    # window of 4 drafts: a row accepted 2 of 4, one accepted all 4 (censored), one had 1 draft left (image end)
    stats.observe(torch.tensor([4, 4, 1, 4]), torch.tensor([2, 4, 1, 3]), active, width=4)
    stats.fold()
    alpha = stats.acceptance_rate()
    assert alpha == pytest.approx((7 + 1) / (7 + 1 + 2))  # 7 accepted trials, 1 rejection, Beta(1, 1)
    assert stats.expected_accepted(2) == pytest.approx((2 + 2 + 1) / 3)
    assert stats.expected_accepted(4) == pytest.approx((2 + 4 + 1) / 3)
    assert stats.expected_accepted(6) == pytest.approx((2 + 4 + alpha + alpha**2 + 1) / 3)


def test_dynamic_tree_stats_count_prefixes_inside_smaller_trees():
    stats = DynamicTreeStats(max_depth=2, max_nodes=6)
    beyond = 6
    # ranks[b, l, d']: row 0 accepted two nodes (ranks 0 then 3 in the 2-round pool, 0 then - in 1 round)
    ranks = torch.tensor([[[beyond, 0, 0], [beyond, beyond, 3], [beyond, beyond, beyond]],
                          [[beyond, 1, 1], [beyond, beyond, beyond], [beyond, beyond, beyond]]])
    stats.observe(ranks, torch.tensor([True, True]), nodes=6, depth=2)
    stats.fold()
    assert stats.expected_accepted(2, 2) == pytest.approx(0.5)  # only rank 0 fits in a 1-candidate tree
    assert stats.expected_accepted(3, 2) == pytest.approx(1.0)
    assert stats.expected_accepted(5, 2) == pytest.approx(1.5)  # row 0's second node has rank 3
    assert stats.expected_accepted(3, 1) == pytest.approx(1.0)
    assert stats.observed(6, 2) and not stats.observed(6, 3)


def test_static_tree_stats_are_per_node_frequencies():
    stats = StaticTreeStats(num_nodes=5)
    stats.observe(torch.tensor([[1, 3, -1], [2, -1, -1]]), torch.tensor([True, True]), torch.tensor([1, 2, 3, 4]))
    stats.fold()
    assert stats.expected_accepted(torch.tensor([1, 2])) == pytest.approx(1.0)
    assert stats.expected_accepted(torch.tensor([1, 2, 3, 4])) == pytest.approx(1.5)


@pytest.mark.parametrize("name", ["sjd", "sd", "eagle2", "lantern++"])
def test_sizer_picks_the_argmax_of_its_model(name):
    method = enable_auto_size(FIXED[name](), calibration=CPU_LIKE)
    for seed in range(3):
        generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=seed)
    method.begin(TARGET, len(CLASSES), SAMPLING, "cpu")  # what the next call would run (folds the statistics)
    candidates = method.size_candidates(method.sizer.stats)
    assert len(candidates) > 2
    rate = {size: (1.0 + method.expected_accepted(method.sizer.stats, size))
            / method.step_seconds(CPU_LIKE, 2 * len(CLASSES), size, method.sizer.stats) for size in candidates}
    choice = method.sizer.history[-1]
    assert rate[choice.size] == pytest.approx(max(rate.values()), rel=1e-6)
    assert choice.tokens_per_second == pytest.approx(rate[choice.size], rel=1e-6)


@pytest.mark.parametrize("name", ["sjd", "sd", "eagle2", "lantern++"])
def test_cheap_tokens_buy_bigger_sizes(name):
    def chosen(calibration):
        method = enable_auto_size(FIXED[name](), calibration=calibration)
        for seed in range(3):
            generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=seed)
        return method.sizer.history[-1].size

    small, large = chosen(CPU_LIKE), chosen(GPU_LIKE)
    key = (lambda s: s) if isinstance(small, int) else (lambda s: tuple(s))
    assert key(large) > key(small), (small, large)


@pytest.mark.parametrize("name", sorted(FIXED))
def test_auto_sizing_is_deterministic_and_equals_the_fixed_method_at_the_chosen_size(name):
    runs = []
    for _ in range(2):
        method = enable_auto_size(FIXED[name](), calibration=CPU_LIKE)
        tokens = [generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=seed).tokens for seed in range(3)]
        runs.append(([c.size for c in method.sizer.history], tokens))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    sizes, tokens = runs[0]
    assert sizes[-1] != sizes[0], "the last call should run a size other than the exploration size"
    fixed = FIXED[name]()
    fixed.apply_size(sizes[-1])
    assert torch.equal(generate(TARGET, CLASSES, fixed, sampling=SAMPLING, seed=2).tokens, tokens[-1])


def test_make_method_size_option():
    method = make_method("sjd", size="auto", calibration=CPU_LIKE)
    assert isinstance(method.sizer, AutoSizer) and method.sizer.calibration is CPU_LIKE
    assert make_method("sjd").sizer is None
    assert make_method("ar", size="auto").sizer is None  # nothing to size
    with pytest.raises(ValueError, match="size"):
        make_method("sjd", size="big")


def test_calibration_is_measured_once_and_cached(tmp_path, monkeypatch):
    calls = []
    real = sizing.calibrate_feed

    def counting(model, rows, device, **kw):
        calls.append(rows)
        return real(model, rows, device, tokens=(1, 2, 4), reps=1, **kw)

    monkeypatch.setattr(sizing, "calibrate_feed", counting)
    first = Calibration.for_models({"target": TARGET, "head": HEAD}, 2, "cpu", sampling=SAMPLING, cache_dir=tmp_path)
    assert calls == [2, 2] and first.has("target", 2) and first.has("head", 2)
    files = list((tmp_path / "specdec" / "sizing").glob("*.json"))
    assert len(files) == 2
    again = Calibration.for_models({"target": TARGET, "head": HEAD}, 2, "cpu", cache_dir=tmp_path)
    assert calls == [2, 2] and again.curves == first.curves
    assert all(s > 0 for s in first.curves[("target", 2)].seconds)
    monkeypatch.setattr(sizing, "_MEASURED_IN_THIS_PROCESS", set())  # as in a later process ...
    monkeypatch.setenv("SPECDEC_RECALIBRATE", "1")  # ... asked to measure again: once
    Calibration.for_models({"target": TARGET}, 2, "cpu", cache_dir=tmp_path)
    Calibration.for_models({"target": TARGET}, 2, "cpu", cache_dir=tmp_path)
    assert calls == [2, 2, 2]


@pytest.mark.parametrize("name", ["sjd", "eagle2", "lantern++"])
def test_truncated_rows_advance_together_and_commit_only_accepted_tokens(name):
    ragged = generate(TARGET, CLASSES, FIXED[name](), sampling=SAMPLING, seed=4)
    method = FIXED[name]()
    method.truncate_to_worst = True
    cut = generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=4)
    assert bool((cut.tokens >= 0).all())
    steps = cut.metrics.row_steps
    assert steps.unique().numel() == 1  # every row advances by the worst row's count
    assert float(ragged.metrics.tokens_per_step.mean()) >= float(cut.metrics.tokens_per_step.mean())
    # the first step is the same for every row: the truncated commit is a prefix of the ragged one
    first = 1 + int(cut.metrics.accept_lens[:, 0].min()) + 1
    assert torch.equal(cut.tokens[:, :first], ragged.tokens[:, :first])


def test_mul32_matches_python_integers():
    h = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789, 3141592653])
    for c in (0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F):
        assert _mul32(h, c).tolist() == [(int(x) * c) % 2**32 for x in h]


@pytest.mark.parametrize("name,size", [("sjd", 1), ("gsd", 1), ("sd", 0), ("eagle2", (1, 0)), ("lantern", (1, 0)),
                                       ("static", (0, 0)), ("lantern++", (0, 0))])
def test_the_no_draft_size_is_plain_ar(name, size):
    """The size auto picks where drafting cannot pay (no drafts / a lone root) is AR, token for token."""
    method = FIXED[name]()
    method.apply_size(size)
    res = generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=6)
    ar = generate(TARGET, CLASSES, methods.AR(), sampling=SAMPLING, seed=6)
    assert torch.equal(res.tokens, ar.tokens)
    assert res.metrics.draft_forwards <= 1 and res.metrics.target_forwards == ar.metrics.target_forwards

