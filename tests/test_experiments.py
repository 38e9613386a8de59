"""The demo / sweep machinery: static-cluster GSD is exactly a partition test, tables are written faithfully, the
quick demo runs end to end on the shipped testbed (AR compression 1, a judged quality table with intervals and
verdicts, a row from a registered producer), judged runs resume from saved tokens."""

import csv
import json

import pytest
import torch

import specdec_kernels as sk
from specdec.experiments.common import write_table
from specdec.experiments.sweep import static_cluster_gsd
from specdec.testbed import data, shipped

have_weights = all((shipped.WEIGHTS_DIR / f"{n}.safetensors").is_file() for n in shipped.MODEL_NAMES)
requires_shipped = pytest.mark.skipif(not (have_weights and data.dataset_available()),
                                      reason="shipped testbed weights or Fashion-MNIST missing")


def test_static_cluster_groups_are_exactly_the_clusters():
    torch.manual_seed(0)
    vocab = 64
    codebook = torch.nn.functional.normalize(torch.randn(vocab, 8), dim=-1)
    method = static_cluster_gsd(codebook, group_size=8, seed=0)
    table = method.embeddings
    same = (table[:, None] == table[None]).all(-1)  # codes sharing a cluster vector
    gap = ((table[:, None] - table[None]) ** 2).sum(-1)[~same]
    assert float(gap.min()) > method.d_thr  # clusters are farther apart than the distance filter
    sizes = same.sum(1)
    assert 1 < sizes.float().mean() < vocab  # real clusters, neither singletons nor one blob
    # One-hot draft (q = 1 on x): P_G must be the target mass of x's cluster, Q_G = 1.
    p = torch.softmax(3 * torch.randn(16, vocab), -1)
    x = torch.randint(0, vocab, (16,))
    kwargs = {k: v for k, v in method.verifier.kernel_kwargs.items() if k != "method"}
    p_g, q_g = sk.gsd_group_mass(p, None, x, **kwargs)
    expected = (p.double() * same[x].double()).sum(-1)
    torch.testing.assert_close(p_g.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q_g.double(), torch.ones(16, dtype=torch.float64))


def test_write_table_csv_and_markdown(tmp_path):
    rows = [{"method": "ar", "x": 1.0, "y": None}, {"method": "sjd", "x": 2.345, "y": 0.5}]
    cols = (("method", "method", "{}"), ("x", "x", "{:.2f}x"), ("y", "y", "{:.1f}"))
    md = write_table(rows, cols, tmp_path / "t.csv", tmp_path / "t.md", "# T")
    assert "| sjd | 2.35x | 0.5 |" in md and "| ar | 1.00x | - |" in md
    with open(tmp_path / "t.csv") as f:
        back = list(csv.DictReader(f))
    assert [r["method"] for r in back] == ["ar", "sjd"] and float(back[1]["x"]) == 2.345


def test_interval_cells_and_callable_columns(tmp_path):
    from specdec.experiments.common import interval_cell

    rows = [{"method": "ar", "kid": 1.234, "kid_lo": 0.5, "kid_hi": 2.0}, {"method": "x", "kid": None}]
    cols = (("method", "method", "{}"), ("kid", "KID", interval_cell("kid", "{:.2f}")))
    md = write_table(rows, cols, tmp_path / "t.csv", tmp_path / "t.md")
    assert "| ar | 1.23 [0.50, 2.00] |" in md and "| x | - |" in md


@requires_shipped
def test_quick_demo_end_to_end(tmp_path):
    from specdec.experiments import demo
    from specdec.metrics.bootstrap import FIGURES

    # A row from another module: a producer registered by name (here AR's own output under another name).
    demo.ROW_PRODUCERS["ar-copy"] = lambda setup, config, name, progress: demo.decoding_output(setup, config, "ar",
                                                                                                progress)
    try:
        config = demo.DemoConfig(images_per_class=1, methods=("ar", "sjd", "ar-copy"), out=tmp_path, threads=1,
                                 judge_images=20, judge_batch=10, bootstrap_replicates=20, resume_dir=tmp_path / "r",
                                 speed_images=4, fixed_sizes={"sjd": (8,)})
        rows = {r["method"]: r for r in demo.run_demo(config, progress=False)}
    finally:
        del demo.ROW_PRODUCERS["ar-copy"]
    assert set(rows) == {"ar", "ar (seed + 1)", "sjd", "ar-copy"}
    assert rows["ar"]["step_compression"] == pytest.approx(1.0) and rows["ar"]["speedup"] == pytest.approx(1.0)
    assert rows["sjd"]["step_compression"] >= 1.0 and rows["sjd"]["speedup"] > 0
    # judged at the size auto sizing settled on: AR steps where no window beat them by the timing noise
    ar_steps = rows["sjd"]["size"] == "no drafts (AR steps)"
    assert (rows["sjd"]["judged_step_compression"] == 1.0) if ar_steps else (rows["sjd"]["judged_step_compression"] > 1)
    assert "speedup" not in rows["ar (seed + 1)"]
    for name, row in rows.items():
        for f in FIGURES:
            assert row[f"{f}_lo"] <= row[f] <= row[f"{f}_hi"], (name, f)
            if name != "ar":
                assert row[f"{f}_diff_lo"] <= row[f"{f}_diff"] <= row[f"{f}_diff_hi"], (name, f)
    assert "verdict" not in rows["ar"] and rows["sjd"]["verdict"] in ("worse", "better", "within chance")
    # The same images as AR's, row for row: every paired difference is exactly zero, never beyond chance.
    assert all(rows["ar-copy"][f"{f}_diff"] == 0 for f in FIGURES)
    assert rows["ar-copy"]["verdict"] == "within chance" and rows["ar-copy"]["beyond_chance"] == "none"
    md = (tmp_path / "demo.md").read_text()
    assert "## Speed" in md and "## Quality" in md and "| ar (seed + 1) |" in md
    # auto and fixed sizes side by side, on the same 4 rows: the papers' window and window 8
    side = {(r["method"], r["sizing"], r["size"]): r for r in json.loads((tmp_path / "demo.json").read_text())[
        "side_by_side"]}
    assert {("sjd", "fixed", "window 16"), ("sjd", "fixed", "window 8")} <= set(side) and "## Sizes side by side" in md
    assert all(r["images"] == 4 for r in side.values())
    auto = next(r for k, r in side.items() if k[:2] == ("sjd", "auto"))
    best = max(r["speedup"] for k, r in side.items() if k[:2] == ("sjd", "fixed"))
    assert auto["vs_best_fixed"] == pytest.approx(auto["speedup"] / best)
    for f in ("demo.md", "demo.csv", "demo.json", "demo.png", "samples_ar.png", "samples_sjd.png"):
        assert (tmp_path / f).stat().st_size > 0
    # Judged runs were saved; a rerun reads them back instead of generating.
    saved = sorted((tmp_path / "r").iterdir())
    assert len(saved) == 3  # ar, ar (seed + 1), sjd (ar-copy's judged run is AR's: same name, rows and keys)
    from specdec.experiments.common import judged_images, prepare

    setup = prepare(config)
    run, _ = judged_images(setup, "sjd", method=None)  # no method needed: the tokens come from the saved run
    assert torch.equal(run.tokens, torch.load(next(p for p in saved if p.name.startswith("sjd")))["tokens"])


@requires_shipped
def test_lantern_delta_zero_is_eagle2_on_the_testbed():
    from specdec.experiments.common import build_method, evaluation_rows, load, run_method

    tb = load()
    classes, keys = evaluation_rows(1, seed=3)
    exact = run_method(tb, "eagle2", build_method(tb, "eagle2"), classes[:4], keys[:4], progress=False)
    relaxed = run_method(tb, "lantern", build_method(tb, "lantern", delta=0.0), classes[:4], keys[:4],
                         progress=False)
    assert torch.equal(exact.tokens, relaxed.tokens)
    assert torch.equal(exact.row_steps, relaxed.row_steps)


def test_plots_from_rows(tmp_path):
    from specdec.experiments.demo import plot_demo
    from specdec.experiments.sweep import plot_sweep

    quality = {"class_accuracy": 0.9, "class_accuracy_lo": 0.85, "class_accuracy_hi": 0.95, "fd_cls": 40.0,
               "fd_cls_lo": 35.0, "fd_cls_hi": 45.0, "kid": 2.0, "kid_lo": 1.0, "kid_hi": 3.0}
    demo_rows = [{"method": "ar", "step_compression": 1.0, "speedup": 1.0, **quality},
                 {"method": "ar (seed + 1)", "step_compression": 1.0, **quality, "verdict": "within chance"},
                 {"method": "sjd", "step_compression": 2.5, "speedup": 1.2, **quality, "verdict": "worse"}]
    plot_demo(demo_rows, tmp_path / "demo.png")
    sweep_rows = [{"family": "ar", "setting": "-", "value": None, "step_compression": 1.0, **quality},
                  {"family": "ar (seed + 1)", "setting": "-", "value": None, "step_compression": 1.0, **quality},
                  {"family": "sjd init", "setting": "init=random", "value": "random", "step_compression": 2.0,
                   **quality}]
    sweep_rows += [{"family": "lantern", "setting": f"delta={d}", "value": d, "step_compression": 2 + d, **quality,
                    "verdict": v} for d, v in ((0.0, "within chance"), (0.1, "worse"))]
    plot_sweep(sweep_rows, tmp_path / "sweep.png")
    assert (tmp_path / "demo.png").stat().st_size > 10_000 and (tmp_path / "sweep.png").stat().st_size > 10_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    from specdec.experiments.common import resolve_device

    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


@requires_shipped
def test_interleaved_timing_keeps_every_methods_tokens():
    # run_methods only reorders the calls: each method's rows, calls and tokens are those it gets run alone.
    from specdec.experiments.common import build_method, evaluation_rows, load, run_method, run_methods, spread_calls

    tb = load()
    classes, keys = evaluation_rows(1, 0)
    classes, keys = classes[:5], keys[:5]
    def auto_without_timing_feedback(name):  # sizes from the statistics alone, not from this machine's timings
        method = build_method(tb, name, size="auto")
        method.sizer.feedback = False
        return method

    make = {"ar": lambda: build_method(tb, "ar"), "sjd": lambda: build_method(tb, "sjd", window=4),
            "lantern++": lambda: auto_without_timing_feedback("lantern++")}
    together = run_methods(tb, {n: f() for n, f in make.items()}, classes, keys, batch_size=2, progress=False)
    assert list(together) == list(make)
    for name, factory in make.items():
        alone = run_method(tb, name, factory(), classes, keys, batch_size=2, progress=False)
        assert torch.equal(together[name].tokens, alone.tokens), name
        assert torch.equal(together[name].row_steps, alone.row_steps), name
        assert together[name].seconds > 0
    assert together["ar"].seconds == pytest.approx(sum(together["ar"].batch_seconds))
    # A method limited to some calls runs there, interleaved; the others' select() covers the same rows.
    assert spread_calls(3, 2) == [0, 2] and spread_calls(10, 3) == [2, 5, 9] and spread_calls(2, 5) == [0, 1]
    limited = run_methods(tb, {n: f() for n, f in make.items()}, classes, keys, batch_size=2, progress=False,
                          calls={"sjd": [0, 2]})
    assert len(limited["sjd"].row_steps) == 3 and len(limited["ar"].row_steps) == 5  # calls of 2, 2 and 1 rows
    assert torch.equal(limited["sjd"].tokens, together["sjd"].tokens[[0, 1, 4]])
    picked = limited["ar"].select([2, 0])
    assert torch.equal(picked.tokens, limited["ar"].tokens[[0, 1, 4]]) and len(picked.accept_lens) == 2
    assert picked.seconds == pytest.approx(limited["ar"].batch_seconds[0] + limited["ar"].batch_seconds[2])
    with pytest.raises(ValueError, match="calls"):
        run_methods(tb, {"ar": make["ar"]()}, classes, keys, calls={"sjd": [0]})
    with pytest.raises(ValueError, match="calls"):
        run_methods(tb, {"ar": make["ar"]()}, classes, keys, batch_size=2, calls={"ar": [3]})


def test_sweep_keeps_only_points_judged_on_the_same_rows(tmp_path):
    import json

    from specdec.experiments.sweep import done_points

    ar = {"family": "ar", "setting": "-", "class_accuracy": 0.99, "fd_cls": 43.6, "kid": 11.9, "precision": 0.91,
          "recall": 0.58, "kid_lo": 8.2, "kid_hi": 15.6}
    point = {"family": "gsd", "setting": "G=2", "kid": 13.1}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps([ar, {**ar, "family": "ar (seed + 1)"}, point]))
    assert done_points(path, ar) == {("gsd", "G=2"): point}
    assert done_points(path, {**ar, "kid": 11.9 + 1e-6}) == {}  # other rows or seeds: AR's figures move
    assert done_points(tmp_path / "missing.json", ar) == {}
