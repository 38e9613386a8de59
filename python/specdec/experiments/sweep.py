"""``specdec sweep``: how much each relaxation buys and what it costs in quality.

Families (each point: step compression, class accuracy, FD-cls over the same rows and seeds):

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

from ..decoding.methods import StaticClusterGSD, sweep_knobs
from .common import QUALITY_COLUMNS, RunConfig, build_method, cost_row, judged_run, machine_line, prepare, write_outputs

DELTAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
LAMBDAS = (1.0, 2.0, 5.0, 10.0, 20.0)
GROUP_SIZES = (2, 4, 8, 14, 26, 50)

COLUMNS = (
    ("family", "family", "{}"),
    ("setting", "setting", "{}"),
    ("step_compression", "step compression", "{:.2f}x"),
    ("accepted_per_step", "accepted / step", "{:.2f}"),
) + QUALITY_COLUMNS


@dataclass
class SweepConfig(RunConfig):
    batch_size: int = 50  # no wall-clock here, so batch for speed
    deltas: Sequence[float] = DELTAS
    lambdas: Sequence[float] = LAMBDAS
    group_sizes: Sequence[int] = GROUP_SIZES

    @classmethod
    def quick(cls, **kw) -> "SweepConfig":
        """A smoke run: 2 images per class, two values per knob."""
        return cls(**{"images_per_class": 2, "deltas": (0.0, 0.2), "lambdas": (1.0, 5.0), "group_sizes": (4, 14),
                      **kw})


def static_cluster_gsd(codebook: torch.Tensor, group_size: int, seed: int = 0, dim: int = 64) -> StaticClusterGSD:
    """GSD whose groups are fixed k-means clusters of about ``group_size`` codes (the registered ``gsd-static``
    method, seeded with the sweep's seed)."""
    return StaticClusterGSD(codebook, group_size=group_size, seed=seed, dim=dim)


def sweep_points(config: SweepConfig):
    """(family, knob, value, method factory) for every point of the sweep."""
    pts = []
    for name, knob in sweep_knobs():  # the knobs registered with each method (specdec.decoding.methods)
        values = getattr(config, knob.values) if isinstance(knob.values, str) else knob.values
        pts += [(knob.family or name, knob.label, v,
                 lambda tb, name=name, opts=knob.options(v): build_method(tb, name, **opts)) for v in values]
    pts += [("gsd-static", "G", g, lambda tb, g=g: static_cluster_gsd(tb.vq.codebook_normalized(), g, config.seed))
            for g in config.group_sizes]
    return pts


def run_sweep(config: SweepConfig = SweepConfig(), progress: bool = True) -> List[Dict]:
    setup = prepare(config)
    ar, _, quality = judged_run(setup, "ar", build_method(setup.tb, "ar"), batch_size=config.batch_size)
    rows = [{"family": "ar", "setting": "-", "value": None, **cost_row(ar), **quality}]
    for family, knob, value, factory in tqdm(sweep_points(config), desc="sweep", disable=not progress):
        setting = f"{knob}={value:g}" if isinstance(value, (int, float)) else f"{knob}={value}"
        run, _, quality = judged_run(setup, f"{family} {setting}", factory(setup.tb), batch_size=config.batch_size)
        rows.append({"family": family, "setting": setting, "value": value, **cost_row(run), **quality})
    header = (f"# Sweep: relaxation vs quality on the shipped testbed\n\n{len(setup.classes)} images "
              f"({config.images_per_class} per class), same rows and seeds for every point. "
              f"Machine: {machine_line(config.threads, setup.device)}.")
    write_outputs(setup, "sweep", rows, COLUMNS, header, rows, plot_sweep, progress)
    return rows


def plot_sweep(rows: Sequence[Dict], path: Path) -> None:
    """Class accuracy and FD-cls against step compression, one line per family, AR as a reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    ar = next(r for r in rows if r["family"] == "ar")
    panels = ((axes[0], "class_accuracy", "class accuracy"), (axes[1], "fd_cls", "FD-cls (lower is better)"))
    for ax, key, label in panels:
        curves = [r for r in rows if isinstance(r["value"], (int, float))]  # knobs with a numeric value
        for family in dict.fromkeys(r["family"] for r in curves):
            pts = [r for r in curves if r["family"] == family]
            ax.plot([r["step_compression"] for r in pts], [r[key] for r in pts], "o-", label=family, ms=4)
            for r in pts:
                ax.annotate(f"{r['value']:g}", (r["step_compression"], r[key]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.scatter([ar["step_compression"]], [ar[key]], marker="*", s=120, color="k", label="ar", zorder=3)
        ax.set_xlabel("step compression (x)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("delta / lambda / G against quality (labels: knob value)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
