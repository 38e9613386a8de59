"""``specdec demo``: every decoding method on the shipped testbed, same classes and seeds, side by side.

Writes to ``out`` (default ``results/``):

* ``samples_<method>.png``: one row per class;
* ``demo.md`` / ``demo.csv``: per method, accepted drafts per verification, tokens per step, step compression
  (AR's target forwards / the method's), wall-clock seconds per image and the speed-up over AR measured in the
  same run, class accuracy, FD-cls, precision / recall; all from one run per method at ``batch_size`` (1 by
  default, the setting the targets are stated for);
* ``demo.png``: step compression next to wall-clock speed-up, and quality against step compression.

An ``ar (seed + 1)`` row (AR again with other uniforms) shows how much the quality figures move by chance alone.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from tqdm.auto import tqdm

from ..decoding.methods import demo_methods
from ..metrics.evaluate import save_grid
from .common import (DEFAULT_SAMPLING, QUALITY_COLUMNS, RunConfig, build_method, cost_row, evaluation_rows,
                     judged_run, machine_line, prepare, write_outputs)

#: The registered methods the demo runs by default (``register(..., demo=True)``), in registration order.
DEMO_METHODS = demo_methods()

COLUMNS = (
    ("method", "method", "{}"),
    ("accepted_per_step", "accepted / step", "{:.2f}"),
    ("tokens_per_step", "tokens / step", "{:.2f}"),
    ("step_compression", "step compression", "{:.2f}x"),
    ("seconds_per_image", "s / image", "{:.3f}"),
    ("speedup", "wall-clock speed-up", "{:.2f}x"),
    ("speedup_over_compression", "speed-up / compression", "{:.2f}"),
) + QUALITY_COLUMNS


@dataclass
class DemoConfig(RunConfig):
    images_per_class: int = 20
    batch_size: int = 1  # the targets are stated at batch 1; wall-clock is per image either way
    methods: Sequence[str] = DEMO_METHODS
    options: Dict[str, dict] = field(default_factory=dict)  # per-method constructor options
    size: str = "auto"  # "auto": cost-aware sizes (specdec.decoding.sizing); "fixed": the papers' sizes
    speed_images: int = 20  # rows of the speed table (fixed vs auto sizes; ragged vs truncated at batch > 1)

    @classmethod
    def quick(cls, **kw) -> "DemoConfig":
        """A smoke run: 2 images per class."""
        return cls(**{"images_per_class": 2, "speed_images": 4, **kw})


def run_demo(config: DemoConfig = DemoConfig(), progress: bool = True) -> List[Dict]:
    """Run every method of ``config`` and write the outputs; returns the table rows."""
    if "ar" not in config.methods:
        raise ValueError("the demo needs 'ar' among the methods: speed-ups and quality are relative to it")
    setup = prepare(config)
    names = ["ar"] + [m for m in config.methods if m != "ar"]
    rows, ar = [], None
    for name in tqdm(names, desc="methods", disable=not progress):
        method = build_method(setup.tb, name, **{"size": config.size, **config.options.get(name, {})})
        run, images, quality = judged_run(setup, name, method, batch_size=config.batch_size, progress=progress)
        ar = ar or run
        rows.append({**cost_row(run, ar), **quality})
        save_grid(images, setup.classes.cpu(), setup.out / f"samples_{_file_name(name)}.png",
                  per_class=min(10, config.images_per_class),
                  title=f"{name}: {run.step_compression:.2f}x fewer target forwards")
    # Chance alone: AR with other uniforms (batched, not timed).
    _, other_keys = evaluation_rows(config.images_per_class, config.seed + 1, setup.device)
    noise, _, quality = judged_run(setup, "ar (seed + 1)", build_method(setup.tb, "ar"), batch_size=50,
                                   keys=other_keys, progress=progress)
    rows.insert(1, {**cost_row(noise), **quality})
    header = (f"# Demo: every method on the shipped testbed\n\n{len(setup.classes)} images ({config.images_per_class} "
              f"per class), CFG {DEFAULT_SAMPLING.cfg_scale}, T {DEFAULT_SAMPLING.temperature}, top-k "
              f"{DEFAULT_SAMPLING.top_k}, seed {config.seed}, batch {config.batch_size}; SJD and GSD with "
              f"LlamaGen's repeat-left init. Machine: {machine_line(config.threads, setup.device)}.")
    write_outputs(setup, "demo", rows, COLUMNS, header, {"config": _jsonable(config), "rows": rows}, plot_demo,
                  progress)
    if config.speed_images:  # throughput.md: fixed vs auto sizes (and ragged vs truncated rows at batch > 1)
        from .throughput import SpeedConfig, run_speed

        run_speed(setup, names, SpeedConfig(config.batch_size, max(config.speed_images, config.batch_size)),
                  config.threads, progress)
    # CSpD on the continuous-token testbed: own table (demo_cspd.md) and grids, same seed, at most 10 per class.
    from ..continuous.demo import run_cspd_demo

    run_cspd_demo(setup.out, min(config.images_per_class, 10), config.seed, progress=progress)
    return rows


def _file_name(method: str) -> str:
    return method.replace("+", "p").replace(" ", "_")


def _jsonable(config: DemoConfig) -> Dict:
    d = asdict(config)
    d["out"], d["weights"] = str(config.out), (str(config.weights) if config.weights else None)
    d["methods"] = list(config.methods)
    return d


def plot_demo(rows: Sequence[Dict], path: Path) -> None:
    """Left: step compression and wall-clock speed-up per method. Right: FD-cls (and class accuracy) against step
    compression, with AR-with-other-uniforms as the chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noise = [r for r in rows if r["method"].startswith("ar (")]
    rows = [r for r in rows if not r["method"].startswith("ar (")]
    names = [r["method"] for r in rows]
    x = torch.arange(len(rows)).numpy()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    ax1.bar(x - 0.2, [r["step_compression"] for r in rows], 0.4, label="step compression")
    ax1.bar(x + 0.2, [r.get("speedup", 0.0) or 0.0 for r in rows], 0.4, label="wall-clock speed-up (this CPU)")
    ax1.axhline(1.0, color="gray", lw=0.8)
    ax1.set_xticks(x, names, rotation=30)
    ax1.set_ylabel("x over AR")
    ax1.legend(fontsize=8)
    ax1.set_title("What each method buys")
    for r in rows:
        ax2.scatter(r["step_compression"], r["fd_cls"], s=30)
        ax2.annotate(f"{r['method']}\nacc {r['class_accuracy']:.3f}", (r["step_compression"], r["fd_cls"]),
                     fontsize=7, xytext=(4, 2), textcoords="offset points")
    for r in noise:  # AR again with other uniforms: how far FD-cls moves by chance
        ax2.axhline(r["fd_cls"], color="gray", lw=0.8, ls="--", label=f"{r['method']}: chance level")
    if noise:
        ax2.legend(fontsize=7, loc="upper left")
    ax2.set_xlabel("step compression (x)")
    ax2.set_ylabel("FD-cls to held-out images (lower is better)")
    ax2.set_title("Quality vs compression")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
