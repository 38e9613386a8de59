"""``specdec sweep``: how much each relaxation buys and what it costs in quality.

Every point is judged on ``judge_images`` rows, the same classes and per-row seeds for every point, generated in
batches: step compression and accepted drafts per verification over those rows, and class accuracy, FD-cls, KID,
precision / recall with bootstrap 95 % intervals, the paired difference to AR and a verdict
(:mod:`specdec.metrics.bootstrap`); ``ar (seed + 1)`` (AR with other seeds) is the chance reference. Families:

* ``lantern``: LANTERN on EAGLE-2 trees, TV budget delta (0 = exact eagle2);
* ``lantern++``: static tree, ratio bound lambda (1 = exact static tree);
* ``init``: SJD and GSD (default G) with the random (Lumina-mGPT) and repeat-left (LlamaGen) Jacobi inits;
* ``gsd``: dynamic groups of G ranks around the draft (G/2 on each side), released filters, repeat-left init;
* ``gsd-static``: the same grouped test over *static* codebook clusters of about G codes (k-means on the
  normalised codebook): GSD's Table 2 ablation. The groups are made exactly the clusters through the partition
  construction of docs/ALGORITHMS.md §5.3 (identical embedding rows within a cluster, far apart across clusters,
  a rank window covering the vocabulary, p_thr > 1).

Writes ``sweep.md`` / ``sweep.csv`` / ``sweep.png`` to ``out`` (default ``results/``).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from tqdm.auto import tqdm

from ..decoding import derive_row_keys
from ..decoding.methods import StaticClusterGSD, sweep_knobs
from .common import (KID_SCALE, QUALITY_COLUMNS, QUALITY_FIELDS, RunConfig, build_method, cost_row, judged_header,
                     judged_run, machine_line, markdown_table, prepare, write_outputs)

DELTAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
LAMBDAS = (1.0, 2.0, 5.0, 10.0, 20.0)
GROUP_SIZES = (2, 4, 8, 14, 26, 50)

COLUMNS = (
    ("family", "family", "{}"),
    ("setting", "setting", "{}"),
    ("step_compression", "step compression", "{:.2f}x"),
    ("accepted_per_step", "accepted / step", "{:.2f}"),
) + QUALITY_COLUMNS
CSV_FIELDS = ("family", "setting", "step_compression", "accepted_per_step", "tokens_per_step") + QUALITY_FIELDS


@dataclass
class SweepConfig(RunConfig):
    deltas: Sequence[float] = DELTAS
    lambdas: Sequence[float] = LAMBDAS
    group_sizes: Sequence[int] = GROUP_SIZES
    keep_done: bool = False  # keep the points of out/sweep.json judged on the same rows instead of rerunning them

    @classmethod
    def quick(cls, **kw) -> "SweepConfig":
        """A smoke run: 10 judged images per class, two values per knob."""
        return cls(**{"judge_images": 100, "deltas": (0.0, 0.2), "lambdas": (1.0, 5.0), "group_sizes": (4, 14),
                      **kw})


def static_cluster_gsd(codebook: torch.Tensor, group_size: int, seed: int = 0, dim: int = 64) -> StaticClusterGSD:
    """GSD whose groups are fixed k-means clusters of about ``group_size`` codes (the registered ``gsd-static``
    method, seeded with the sweep's seed)."""
    return StaticClusterGSD(codebook, group_size=group_size, seed=seed, dim=dim)


def sweep_points(config: SweepConfig):
    """(family, knob, value, method factory) for every point of the sweep: the knobs registered with each method
    (specdec.decoding.methods) plus static-cluster GSD, the cheapest families first (SJD and GSD; then LANTERN++'s
    static tree; then LANTERN's dynamic trees, the costliest on a CPU)."""
    pts = []
    for name, knob in sweep_knobs():
        values = getattr(config, knob.values) if isinstance(knob.values, str) else knob.values
        pts += [(knob.family or name, knob.label, v,
                 lambda tb, name=name, opts=knob.options(v): build_method(tb, name, **opts)) for v in values]
    pts += [("gsd-static", "G", g, lambda tb, g=g: static_cluster_gsd(tb.vq.codebook_normalized(), g, config.seed))
            for g in config.group_sizes]
    cost_rank = {"lantern++": 1, "lantern": 2}  # tree families last: they cost the most per image on a CPU
    return sorted(pts, key=lambda point: cost_rank.get(point[0], 0))


def run_sweep(config: SweepConfig = SweepConfig(), progress: bool = True) -> List[Dict]:
    """Judge AR, AR with other seeds and every point of :func:`sweep_points`; write the outputs; returns the rows."""
    setup = prepare(config, progress)
    ar, _, ar_judged = judged_run(setup, "ar", build_method(setup.tb, "ar"), progress=progress)
    rows = [{"family": "ar", "setting": "-", "value": None, **cost_row(ar), **setup.judge.fields(ar_judged, None)}]
    other_keys = derive_row_keys(len(setup.judged_classes), config.seed + 1, setup.device)
    noise, _, judged = judged_run(setup, "ar (seed + 1)", build_method(setup.tb, "ar"), keys=other_keys,
                                  progress=progress)
    rows.append({"family": "ar (seed + 1)", "setting": "-", "value": None, **cost_row(noise),
                 **setup.judge.fields(judged, ar_judged)})
    points = sweep_points(config)
    kept = done_points(setup.out / "sweep.json", rows[0]) if config.keep_done else {}
    for done, (family, knob, value, factory) in enumerate(tqdm(points, desc="sweep", disable=not progress), 1):
        setting = f"{knob}={value:g}" if isinstance(value, (int, float)) else f"{knob}={value}"
        if (family, setting) in kept:
            rows.append(kept[(family, setting)])
            continue
        run, _, judged = judged_run(setup, f"{family} {setting}", factory(setup.tb), progress=progress)
        rows.append({"family": family, "setting": setting, "value": value, **cost_row(run),
                     **setup.judge.fields(judged, ar_judged)})
        # Written after every point: a long sweep shows its results as it goes.
        left = "" if done == len(points) else f" **In progress: {done} of {len(points)} points judged.**"
        markdown = (f"# Sweep: relaxation vs quality on the shipped testbed\n\nStep compression and accepted drafts "
                    f"per verification over the judged rows. Machine: {machine_line(config.threads, setup.device)}."
                    f"{left}\n\n{judged_header(setup)}\n\n" + markdown_table(rows, COLUMNS))
        write_outputs(setup, "sweep", rows, CSV_FIELDS, markdown, rows, plot_sweep, progress and done == len(points))
    return rows


def done_points(path: Path, ar_row: Dict) -> Dict:
    """``(family, setting) -> row`` of the points a previous sweep wrote to ``path``, when it judged the same rows
    the same way: its AR row must carry this run's AR figures to the last digit (the same rows, seeds, weights and
    bootstrap give the same figures; anything else changes them), else nothing is kept. Its rows' paired
    differences were taken against that same AR judgement, so they stand as they are."""
    import json

    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    saved_ar = next((r for r in saved if r.get("family") == "ar"), None)
    figures = ("class_accuracy", "fd_cls", "kid", "precision", "recall", "kid_lo", "kid_hi")
    if saved_ar is None or any(abs(saved_ar.get(f, float("nan")) - ar_row[f]) > 1e-9 * max(1.0, abs(ar_row[f]))
                               for f in figures):
        return {}
    return {(r["family"], r["setting"]): r for r in saved if r.get("family") not in ("ar", "ar (seed + 1)")}


def plot_sweep(rows: Sequence[Dict], path: Path) -> None:
    """Class accuracy, FD-cls and KID against step compression with their 95 % intervals, one line per family
    (squares: the Jacobi inits; hollow markers: differs from AR beyond chance on KID), AR as a star and
    AR-with-other-seeds' interval as the chance band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), dpi=110)
    ar = next(r for r in rows if r["family"] == "ar")
    noise = [r for r in rows if r["family"].startswith("ar (")]
    panels = ((axes[0], "class_accuracy", "class accuracy", 1.0), (axes[1], "fd_cls", "FD-cls (lower is better)", 1.0),
              (axes[2], "kid", "KID (lower is better)", KID_SCALE))
    curves = [r for r in rows if isinstance(r["value"], (int, float))]  # knobs with a numeric value
    singles = [r for r in rows if r["value"] is not None and not isinstance(r["value"], (int, float))]
    for ax, key, label, scale in panels:
        for family in dict.fromkeys(r["family"] for r in curves):
            pts = [r for r in curves if r["family"] == family]
            xs = [r["step_compression"] for r in pts]
            ys = [r[key] * scale for r in pts]
            err = [[(r[key] - r.get(f"{key}_lo", r[key])) * scale for r in pts],
                   [(r.get(f"{key}_hi", r[key]) - r[key]) * scale for r in pts]]
            line = ax.errorbar(xs, ys, yerr=err, fmt="-", capsize=2, lw=1, label=family)
            color = line[0].get_color()
            for r, x, y in zip(pts, xs, ys):
                differs = r.get("verdict", "within chance") != "within chance"
                ax.plot([x], [y], "o", ms=5, color=color, mfc="white" if differs else color)
                ax.annotate(f"{r['value']:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        for r in singles:  # knobs without a numeric value (Jacobi inits): one point each
            differs = r.get("verdict", "within chance") != "within chance"
            ax.errorbar([r["step_compression"]], [r[key] * scale], yerr=_error(r, key, scale), fmt="s", ms=5,
                        capsize=2, color="gray", mfc="white" if differs else "gray")
            ax.annotate(f"{r['family'].split()[0]} {r['value']}", (r["step_compression"], r[key] * scale), fontsize=6,
                        xytext=(3, -8), textcoords="offset points")
        for r in noise:
            lo, hi = r.get(f"{key}_lo", r[key]) * scale, r.get(f"{key}_hi", r[key]) * scale
            ax.axhspan(lo, hi, color="gray", alpha=0.2, label="ar (seed + 1), 95 %")
        ax.errorbar([ar["step_compression"]], [ar[key] * scale],
                    yerr=[[(ar[key] - ar.get(f"{key}_lo", ar[key])) * scale],
                          [(ar.get(f"{key}_hi", ar[key]) - ar[key]) * scale]],
                    fmt="*", ms=12, color="k", capsize=3, label="ar", zorder=3)
        ax.set_xlabel("step compression (x)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].set_title("delta / lambda / G against quality (labels: knob value; hollow: differs from AR on KID)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _error(row: Dict, key: str, scale: float):
    """A row's interval of ``key`` as matplotlib's asymmetric ``yerr``."""
    return [[(row[key] - row.get(f"{key}_lo", row[key])) * scale], [(row.get(f"{key}_hi", row[key]) - row[key]) * scale]]
