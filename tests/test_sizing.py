"""Cost-aware sizing (specdec.decoding.sizing): the cost model, the acceptance statistics, the argmax, the cached
calibration, and that auto-sized methods are the fixed-size methods at the sizes they chose (so exact methods stay
exact and runs are reproducible)."""

import json
from dataclasses import replace

import pytest
import torch

from specdec.decoding import SamplingConfig, generate, make_method, methods
from specdec.decoding import sizing
from specdec.decoding.rng import _mul32
from specdec.decoding.sizing import (MIN_MARGIN, AutoSizer, Calibration, ChainStats, Choice, CostCurve,
                                     DynamicTreeStats, StaticTreeStats, best, decide, enable_auto_size)
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


def test_per_width_chain_stats_use_each_windows_own_records():
    stats = ChainStats(per_width=True)
    on = torch.tensor([True, True])
    stats.observe(torch.tensor([15, 15]), torch.tensor([6, 15]), on, width=15)  # long window: accepts a lot
    stats.observe(torch.tensor([3, 3]), torch.tensor([1, 0]), on, width=3)  # short window: its own, less
    stats.fold()
    assert stats.observed(3) and stats.observed(15) and not stats.observed(4)
    assert stats.expected_accepted(3) == pytest.approx(0.5)  # not min(a, 3) of the 15-draft window (3.0)
    assert stats.expected_accepted(2) == pytest.approx(0.5)  # borrowed from the nearest run width above (3)
    assert stats.expected_accepted(8) == pytest.approx((6 + 8) / 2)  # ... here 15, truncated
    alpha = stats.acceptance_rate()
    assert stats.expected_accepted(17) == pytest.approx((6 + 15 + alpha + alpha**2) / 2)  # 15, extended
    pooled = ChainStats()
    pooled.by_width = stats.by_width
    assert pooled.expected_accepted(3) == pytest.approx((1 + 0 + 3 + 3) / 4)  # SD: every record, truncated


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
def test_sizer_runs_the_fastest_size_that_beats_ar_by_the_margin(name):
    method = enable_auto_size(FIXED[name](), calibration=CPU_LIKE)
    for seed in range(3):
        generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=seed)
    method.begin(TARGET, len(CLASSES), SAMPLING, "cpu")  # what the next call would run (folds the statistics)
    candidates = method.size_candidates(method.sizer.stats)
    assert len(candidates) > 2
    rate = {size: (1.0 + method.expected_accepted(method.sizer.stats, size))
            / method.step_seconds(CPU_LIKE, 2 * len(CLASSES), size, method.sizer.stats) for size in candidates}
    ar = candidates[0]
    margin = MIN_MARGIN  # synthetic curves have no timing noise
    eligible = {size: r for size, r in rate.items() if size != ar and r > rate[ar] * (1 + margin)}
    expected = max(eligible.values()) if eligible else rate[ar]
    choice = method.sizer.history[-1]
    assert rate[choice.size] == pytest.approx(expected, rel=1e-6)
    assert choice.tokens_per_second == pytest.approx(rate[choice.size], rel=1e-6)
    assert choice.reason == ("fastest" if eligible else "ar") and choice.margin == margin


def test_decide_needs_the_margin_over_ar_on_the_curves_and_with_overheads():
    ar = Choice(0, 1.0, 1.0, 1.0)
    assert decide([ar, Choice(1, 1.015, 1.0, 1.0)], 0.02).reason == "ar"  # 1.5 % faster: within the noise
    top = decide([ar, Choice(1, 1.03, 1.0, 1.0), Choice(2, 1.2, 1.0, 1.0)], 0.02)
    assert (top.size, top.reason, top.margin, top.ar_tokens_per_second) == (2, "fastest", 0.02, 1.0)
    # the curves say size 1 wins, but its measured overhead makes it slower than AR steps (and vice versa)
    assert decide([ar, Choice(1, 1.5, 2.0, 1.0)], 0.02).size == 0
    assert decide([Choice(0, 1.0, 1.0, 0.5), Choice(1, 1.5, 1.0, 1.0)], 0.02).size == 0


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


def test_non_decreasing_pools_adjacent_violators_at_their_mean():
    assert sizing._non_decreasing([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert sizing._non_decreasing([1.0, 3.0, 2.0, 4.0]) == pytest.approx([1.0, 2.5, 2.5, 4.0])
    assert sizing._non_decreasing([3.0, 2.0, 1.0, 5.0]) == pytest.approx([2.0, 2.0, 2.0, 5.0])
    assert sizing._non_decreasing([1.0, 4.0, 2.0, 2.0, 6.0]) == pytest.approx([1.0, 8 / 3, 8 / 3, 8 / 3, 6.0])


def test_calibration_rounds_keep_a_passing_slowdown_off_the_curve(monkeypatch):
    """A feed of T tokens costs 1 + T (virtual) seconds, but the machine runs three times slower for a stretch of
    the calibration as long as two rounds over the points: timed round by round, every point keeps five of its
    seven reps unslowed and its median is its true cost (timed point by point, the slowdown would land on one or
    two points whole, bending the curve)."""
    import specdec.decoding.feed as feed

    tokens, reps = (1, 2, 4, 8), 7
    clock = {"now": 0.0, "feeds": 0}
    real_run = feed.run_model

    def slow_run(model, cache, ids, *args, **kw):
        clock["feeds"] += 1
        warm = 4  # the untimed warm-up feeds
        slowed = warm + 2 * len(tokens) < clock["feeds"] <= warm + 4 * len(tokens)
        clock["now"] += (1.0 + ids.shape[1]) * (3.0 if slowed else 1.0)
        return real_run(model, cache, ids, *args, **kw)

    monkeypatch.setattr(feed, "run_model", slow_run)
    monkeypatch.setattr(sizing.time, "perf_counter", lambda: clock["now"])
    curve = sizing.calibrate_feed(TARGET, 2, "cpu", sampling=SAMPLING, tokens=tokens, reps=reps)
    assert clock["feeds"] == 4 + reps * len(tokens)
    assert curve.seconds == pytest.approx(tuple(1.0 + t for t in tokens))


def test_cached_curves_of_an_older_calibration_are_measured_again(tmp_path, monkeypatch):
    """A cache file written by another calibration version is not read: its curves are measured anew."""
    calls = []
    monkeypatch.setattr(sizing, "calibrate_feed",
                        lambda model, rows, device, **kw: calls.append(rows) or CostCurve((1, 2), (1.0, 2.0)))
    path = sizing._cache_path(TARGET, "cpu", tmp_path)
    assert path.name.endswith(f"-v{sizing.CALIBRATION_VERSION}.json")
    old = path.with_name(path.name.replace(f"-v{sizing.CALIBRATION_VERSION}", ""))
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"2": CostCurve((1, 2), (5.0, 5.0)).to_json()}))
    calib = Calibration.for_models({"target": TARGET}, 2, "cpu", cache_dir=tmp_path)
    assert calls == [2] and calib.curves[("target", 2)].seconds == (1.0, 2.0) and path.exists()


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



# -- synthetic cost curves where the right size is known ---------------------------------------------------------
ROWS = 2  # one CFG-doubled row
CPU_CURVE = CostCurve((1, 12, 64), (1.0, 1.4, 1.4 + 52 * 0.4 / 11))  # a 12-token forward costs 1.4 single ones
GPU_CURVE = CostCurve((1, 64), (1.0, 1.0))  # flat: a few dozen tokens cost as much as one
LINEAR_CURVE = CostCurve((1, 64), (1.0, 64.0))  # every token costs a forward: no draft can pay


def _geometric_window_stats(alpha: float, widths) -> ChainStats:
    """Per-width records of windows whose drafts are each accepted with probability ``alpha`` (truncated
    geometric weights): a window of ``n`` drafts accepts ``sum(alpha**i, i = 1..n)`` on average."""
    stats = ChainStats(per_width=True)
    for n in widths:
        counts = {(n, a, False): alpha**a * (1 - alpha) for a in range(n)}
        counts[(n, n, True)] = alpha**n
        stats.by_width[n] = counts
    return stats


def _sjd_choice(curve: CostCurve, alpha: float, **sizer_kw):
    method = methods.SJD(window=16)
    enable_auto_size(method, calibration=Calibration({("target", ROWS): curve}), **sizer_kw)
    method.sizer.stats = _geometric_window_stats(alpha, range(0, methods.sjd.MAX_AUTO_WINDOW))
    method.begin(TARGET, 1, SAMPLING, "cpu")
    return method


def _known_best_window(curve: CostCurve, alpha: float) -> int:
    rate = {w: (1 + sum(alpha**i for i in range(1, w))) / curve(w) for w in range(1, methods.sjd.MAX_AUTO_WINDOW + 1)}
    top = max(rate, key=lambda w: (rate[w], -w))
    return top if rate[top] > rate[1] * (1 + MIN_MARGIN) else 1


@pytest.mark.parametrize("curve,alpha,expected", [
    (CPU_CURVE, 0.8, 10),  # a mid-sized window: by hand, window 10 gives 4.46 tokens per 1.33 forwards
    (CPU_CURVE, 0.02, 1),  # AR is fastest: drafts are almost never accepted
    (CPU_CURVE, 0.03, 1),  # window 2 would be 1.3 % faster than AR on the curve: within the margin, AR steps
    (GPU_CURVE, 0.8, 32),  # flat cost: the longest window
    (GPU_CURVE, 0.0, 1),  # nothing is accepted: drafting is no faster even when it is free
    (LINEAR_CURVE, 0.95, 1),  # every token costs a forward: AR
])
def test_synthetic_curves_give_the_known_window(curve, alpha, expected):
    assert _known_best_window(curve, alpha) == expected
    method = _sjd_choice(curve, alpha)
    choice = method.sizer.history[-1]
    assert choice.size == expected and method.num_drafts == expected - 1
    assert choice.reason == ("ar" if expected == 1 else "fastest")


def test_synthetic_sd_gamma_on_cpu_and_gpu_curves():
    """SD at per-draft acceptance 0.8: with drafts at a tenth of a target forward the CPU curve pays for a few
    drafts and the flat curve for the most; with drafts as dear as a forward, AR steps."""
    def gamma(target, draft_scale):
        draft = CostCurve(target.tokens, tuple(draft_scale * s for s in target.seconds))
        method = enable_auto_size(methods.SD(DRAFT, gamma=4),
                                  calibration=Calibration({("target", ROWS): target, ("draft", ROWS): draft}))
        stats = ChainStats()
        stats.by_width[8] = _geometric_window_stats(0.8, [8]).by_width[8]
        method.sizer.stats = stats
        method.begin(TARGET, 1, SAMPLING, "cpu")
        return method.sizer.history[-1].size

    def known(target, draft_scale):
        def rate(g):
            seconds = target(g + 1) + (draft_scale * (target(2) + (g - 1) * target(1)) if g else 0.0)
            return (1 + sum(0.8**i for i in range(1, g + 1))) / seconds
        top = max(range(9), key=lambda g: (rate(g), -g))
        return top if rate(top) > rate(0) * (1 + MIN_MARGIN) else 0

    for target, scale in ((CPU_CURVE, 0.1), (GPU_CURVE, 0.1), (CPU_CURVE, 1.0), (LINEAR_CURVE, 0.01)):
        assert gamma(target, scale) == known(target, scale)
    assert known(CPU_CURVE, 0.1) not in (0, 8) and known(GPU_CURVE, 0.1) > known(CPU_CURVE, 0.1)
    assert known(CPU_CURVE, 1.0) == 0 and known(LINEAR_CURVE, 0.01) == 0


@pytest.mark.parametrize("name", sorted(FIXED))
def test_linear_cost_runs_ar_steps_for_every_method(name):
    """Where a feed costs as many forwards as it has tokens (and drafting is not free), no draft can pay: after
    exploring, every method runs AR steps, token for token AR's."""
    calib = Calibration({(role, r): CostCurve((1, 128), (scale, 128 * scale)) for role, scale in
                         (("target", 1.0), ("draft", 0.02), ("head", 0.02)) for r in (2, 12)})
    method = enable_auto_size(FIXED[name](), calibration=calib)
    for seed in range(2):
        generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=seed)
    res = generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=7)
    choice = method.sizer.history[-1]
    assert choice.reason == "ar" and _key(choice.size) == _key(method.size_candidates(method.sizer.stats)[0])
    assert torch.equal(res.tokens, generate(TARGET, CLASSES, methods.AR(), sampling=SAMPLING, seed=7).tokens)


def _key(size):
    return tuple(size) if isinstance(size, (list, tuple)) else size


# -- measured feedback: overheads, AR probe, drift --------------------------------------------------------------
def _simulate(curve: CostCurve, alpha: float, overhead, calls: int = 30):
    """Calls of an auto-sized SJD whose measured step is the curve's cost plus ``overhead(window)``."""
    method = _sjd_choice(curve, alpha, feedback=True)
    sizer = method.sizer
    for _ in range(calls):
        choice = sizer.history[-1]
        sizer.observe_step_time(choice, ROWS, choice.model_seconds_per_step + overhead(choice.size))
        method.begin(TARGET, 1, SAMPLING, "cpu")
    return sizer


def test_feedback_probes_ar_then_settles_on_the_fastest_measured_window():
    overhead = lambda window: 0.1 + 0.02 * (window > 1)  # speculative steps cost a little more (Jacobi update)
    sizer = _simulate(CPU_CURVE, 0.8, overhead)
    assert sizer.history[0].reason == "probe" and sizer.history[0].size == 1
    rate = {w: (1 + sum(0.8**i for i in range(1, w))) / (CPU_CURVE(w) + overhead(w)) for w in range(1, 33)}
    assert sizer.history[-1].size == max(rate, key=rate.get)
    assert sizer.history[-1].seconds_per_step == pytest.approx(CPU_CURVE(sizer.history[-1].size) + 0.12)


def test_feedback_falls_back_to_ar_when_measured_drafting_steps_lose():
    """The curves say windows pay, but measured speculative steps cost five forwards more than predicted: the
    sizer tries windows (each at most ``TRUSTED_CALLS`` times, optimistically) and then runs AR steps (at most 5
    tokens per step at 6 forwards or more: no window can pay)."""
    sizer = _simulate(CPU_CURVE, 0.8, lambda window: 0.1 if window == 1 else 5.0)
    assert sizer.history[-1].size == 1 and sizer.history[-1].reason == "ar"
    tried = [c.size for c in sizer.history if c.size != 1]
    assert all(tried.count(w) <= sizing.TRUSTED_CALLS for w in tried) and len(set(tried)) < 10
    assert all(c.size == 1 for c in sizer.history[-10:])


def test_one_slowed_call_does_not_price_a_window_out():
    """The first call of the best window runs three times slower (other work on the machine): the window and every
    window past it would look lost on that call alone; the sizer runs it again and settles on it."""
    overhead = lambda window: 0.1 + 0.02 * (window > 1)
    rate = {w: (1 + sum(0.8**i for i in range(1, w))) / (CPU_CURVE(w) + overhead(w)) for w in range(1, 33)}
    fastest = max(rate, key=rate.get)
    method = _sjd_choice(CPU_CURVE, 0.8, feedback=True)
    sizer, slowed = method.sizer, []
    for _ in range(30):
        choice = sizer.history[-1]
        step = choice.model_seconds_per_step + overhead(choice.size)
        if choice.size == fastest and not slowed:
            slowed.append(choice)
            step *= 3.0
        sizer.observe_step_time(choice, ROWS, step)
        method.begin(TARGET, 1, SAMPLING, "cpu")
    assert slowed and sizer.history[-1].size == fastest
    assert all(c.size == fastest for c in sizer.history[-5:])


def test_drift_from_the_prediction_recalibrates(tmp_path, monkeypatch):
    calls = []

    def fake_calibrate(model, rows, device, **kw):  # no timing: a known curve, noisier each time it is measured
        calls.append(rows)
        return CostCurve(CPU_CURVE.tokens, CPU_CURVE.seconds, 0.01 * len(calls))

    monkeypatch.setattr(sizing, "calibrate_feed", fake_calibrate)
    method = enable_auto_size(methods.SJD(window=16), cache_dir=tmp_path)
    method.begin(TARGET, 1, SAMPLING, "cpu")  # fresh cache: calibrates, explores
    assert calls == [ROWS] and method.sizer.feedback and method.sizer.history[-1].reason == "explore"
    method.sizer.stats = _geometric_window_stats(0.8, range(32))
    steady = lambda c: c.seconds_per_step if c.seconds_per_step == c.seconds_per_step else 1.0
    for _ in range(sizing.RECALIBRATION_COOLDOWN + 2):  # measured as predicted: no re-calibration
        method.begin(TARGET, 1, SAMPLING, "cpu")
        c = method.sizer.history[-1]
        method.sizer.observe_step_time(c, ROWS, steady(c))
    assert calls == [ROWS] and method.sizer.recalibrations == 0
    for _ in range(sizing.DRIFT_CALLS):  # the machine got twice as slow
        method.begin(TARGET, 1, SAMPLING, "cpu")
        c = method.sizer.history[-1]
        method.sizer.observe_step_time(c, ROWS, 2 * steady(c))
    method.begin(TARGET, 1, SAMPLING, "cpu")
    assert calls == [ROWS, ROWS] and method.sizer.recalibrations == 1
    assert method.sizer.history[-1].reason == "probe"  # overheads are forgotten: AR steps are timed again
    stored = json.loads(next((tmp_path / "specdec" / "sizing").glob("*.json")).read_text())
    assert stored[str(ROWS)]["noise"] == pytest.approx(0.02)  # the new measurement replaced the cached one


def test_recalibration_waits_until_the_calls_since_paid_for_it(tmp_path, monkeypatch):
    """Drift schedules a re-calibration only once the calls since the last measurement took RECALIBRATION_PAYBACK
    times what measuring the curves again takes: re-calibrating costs at most that share of the run."""
    calls = []

    def fake_calibrate(model, rows, device, **kw):
        calls.append(rows)
        return CostCurve(CPU_CURVE.tokens, CPU_CURVE.seconds, 0.01)

    monkeypatch.setattr(sizing, "calibrate_feed", fake_calibrate)
    method = enable_auto_size(methods.SJD(window=16), cache_dir=tmp_path)
    method.begin(TARGET, 1, SAMPLING, "cpu")
    sizer = method.sizer
    sizer.stats = _geometric_window_stats(0.8, range(32))
    roles = {"target": TARGET}
    budget = sizing.RECALIBRATION_PAYBACK * sizing.calibration_seconds(CPU_CURVE)
    call_seconds = budget / 40  # each call a 40th of the budget
    spent = 0.0
    for i in range(60):  # the machine got twice as slow from the first call on: drift every call
        method.begin(TARGET, 1, SAMPLING, "cpu")
        c = sizer.history[-1]
        step = c.seconds_per_step if c.seconds_per_step == c.seconds_per_step else 1.0
        sizer.observe_step_time(c, ROWS, 2 * step, call_seconds=call_seconds, roles=roles)
        spent += call_seconds
        if sizer._recalibrate:
            break
    assert sizer._recalibrate and spent >= budget * (1 - 1e-9)  # it did recalibrate, not before the budget
    assert spent < budget + sizing.DRIFT_CALLS * call_seconds + 1e-9  # and as soon as the budget allowed
    method.begin(TARGET, 1, SAMPLING, "cpu")
    assert calls == [ROWS, ROWS] and sizer.recalibrations == 1


def test_metrics_report_the_size_and_its_predicted_vs_measured_speed():
    method = enable_auto_size(FIXED["sjd"](), calibration=CPU_LIKE)
    reports = [generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=s).metrics for s in range(3)]
    assert reports[0].sizing.reason == "explore"
    last, choice = reports[-1].sizing, method.sizer.history[-1]
    assert last.size == choice.size and last.label == method.size_label() and last.reason == choice.reason
    assert last.predicted_tokens_per_second == pytest.approx(choice.tokens_per_second)
    assert last.measured_tokens_per_step == pytest.approx(float(reports[-1].tokens_per_step.mean()))
    assert 0 < last.measured_seconds_per_step < reports[-1].wall_time_s
    summary = reports[-1].summary()
    assert summary["size"] == last.label and summary["measured_tokens_per_second"] > 0
    assert generate(TARGET, CLASSES, FIXED["sjd"](), sampling=SAMPLING).metrics.sizing is None


@pytest.mark.parametrize("name", ["sjd", "sd", "lantern++"])
def test_fresh_cache_calibrates_and_never_picks_a_size_the_curve_says_loses(name, tmp_path, monkeypatch):
    real = sizing.calibrate_feed
    monkeypatch.setattr(sizing, "calibrate_feed",
                        lambda model, rows, device, **kw: real(model, rows, device, tokens=(1, 2, 4, 8, 16, 32, 64),
                                                               reps=3, **kw))
    method = enable_auto_size(FIXED[name](), cache_dir=tmp_path)
    for seed in range(5):
        generate(TARGET, CLASSES, method, sampling=SAMPLING, seed=seed)
    sizer, rows = method.sizer, 2 * len(CLASSES)
    assert list((tmp_path / "specdec" / "sizing").glob("*.json")) and sizer.calibration.source == "measured"
    assert sizer.feedback and [c.reason for c in sizer.history[:2]] == ["explore", "probe"]
    ar = method.size_candidates(sizer.stats)[0]
    ar_rate = 1.0 / method.step_seconds(sizer.calibration, rows, ar, sizer.stats)
    for c in sizer.history[2:]:
        assert c.reason in ("fastest", "ar") and c.margin >= MIN_MARGIN
        if c.reason == "fastest":
            rate = c.tokens_per_step / method.step_seconds(sizer.calibration, rows, c.size, sizer.stats)
            assert rate > ar_rate * (1 + c.margin) and c.tokens_per_second > c.ar_tokens_per_second * (1 + c.margin)
        else:
            assert _key(c.size) == _key(ar)


def test_an_untried_size_displaces_a_tried_one_only_beyond_the_margin():
    ar = Choice(0, 1.0, 1.0, 1.0, measured=True)
    tried, untried = Choice(1, 2.0, 1.0, 1.0, measured=True), Choice(2, 2.03, 1.0, 1.0)
    assert decide([ar, tried, untried], 0.02).size == 1  # 1.5 % faster on paper: stay
    assert decide([ar, tried, replace(untried, tokens_per_step=2.1)], 0.02).size == 2  # 5 %: try it
    assert decide([ar, untried], 0.02).size == 2  # nothing tried yet


def test_noise_either_way_is_not_drift():
    method = _sjd_choice(CPU_CURVE, 0.8, feedback=True)
    sizer = method.sizer
    for i in range(sizing.RECALIBRATION_COOLDOWN + 4 * sizing.DRIFT_CALLS):
        choice = sizer.history[-1]
        factor = 1.0 if i < sizing.RECALIBRATION_COOLDOWN else (1.5 if i % 2 else 0.6)  # off by 40-50 %, alternating
        sizer.observe_step_time(choice, ROWS, factor * (choice.model_seconds_per_step + 0.1))
        method.begin(TARGET, 1, SAMPLING, "cpu")
        assert not sizer._recalibrate and sizer._drift_calls <= 1


def test_held_size_runs_the_settled_size_not_a_probe():
    method = _sjd_choice(CPU_CURVE, 0.8, feedback=True)
    sizer = method.sizer
    sizer.history += [Choice(w, 1.0, 1.0, reason=r) for w, r in
                      ((8, "fastest"), (8, "fastest"), (9, "fastest"), (8, "fastest"), (1, "probe"))]
    assert sizer.settled() == 8 and sizer.settled(calls=1) == 8
    method.apply_size(1)  # the last call was a probe
    calls = len(sizer.history)
    with sizing.held_size(method) as held:
        assert held.sizer is None and held.num_drafts == 7
        res = generate(TARGET, CLASSES, held, sampling=SAMPLING, seed=3)
    assert method.sizer is sizer and len(sizer.history) == calls and res.metrics.sizing is None
    fixed = methods.SJD(window=8)
    assert torch.equal(res.tokens, generate(TARGET, CLASSES, fixed, sampling=SAMPLING, seed=3).tokens)
    assert AutoSizer().settled() is None
